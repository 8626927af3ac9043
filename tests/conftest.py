"""Shared fixtures: paths into ../shared (CI has it beside the clone) and small real models."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("HYENA_SHARED", ROOT.parent / "shared"))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# `pytest -n N` (pytest-xdist, the default: pyproject's addopts) runs N worker processes side by
# side; each gets an equal share of the cores, so that they do not fight over them.
WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
THREADS = max(1, min(2, (os.cpu_count() or 1) // WORKERS))
torch.set_num_threads(THREADS)
os.environ["OMP_NUM_THREADS"] = str(THREADS)  # stages the tests start as processes compute as in-process ones


# Tests that share an expensive fixture run on one pytest-xdist worker (`--dist loadgroup`), so that
# it is built once: the tiny pipeline run (~2 min) and the real SmolLM2 teacher (~20 s to dequantise).
GROUPED_BY_FIXTURE = {"tiny_repo": "tiny_pipeline", "smollm_teacher": "smollm", "smollm_teacher_dir": "smollm"}


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist reads the groups
def pytest_collection_modifyitems(items):
    for item in items:
        group = next((g for f, g in GROUPED_BY_FIXTURE.items() if f in getattr(item, "fixturenames", ())), None)
        if group:
            item.add_marker(pytest.mark.xdist_group(group))


def ci_script(name: str):
    """.ci/<name>.py (a script, not a package module) imported as a module."""
    spec = importlib.util.spec_from_file_location(f"ci_{name}", ROOT / ".ci" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _need(path: Path) -> Path:
    if not path.exists():
        pytest.fail(f"missing shared resource {path}: set HYENA_SHARED to the shared/ directory")
    return path


@pytest.fixture(scope="session")
def shared() -> Path:
    return _need(SHARED)


@pytest.fixture(scope="session")
def pythia_dir(shared) -> Path:
    return _need(shared / "models" / "pythia-70m")


@pytest.fixture(scope="session")
def smollm_gguf(shared) -> Path:
    return _need(shared / "models" / "smollm2-135m-instruct" / "SmolLM2-135M-Instruct.Q4_1.gguf")


@pytest.fixture(scope="session")
def owt_jsonl(shared) -> Path:
    return _need(shared / "data" / "openwebtext" / "owt_val_1000docs.jsonl")


@pytest.fixture(scope="session")
def wikitext_raw(shared) -> Path:
    return _need(shared / "data" / "wikitext-2-raw" / "wiki.test.raw")


@pytest.fixture(scope="session")
def pythia_tokenizer(pythia_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(pythia_dir))


@pytest.fixture(scope="session")
def smollm_teacher_dir(smollm_gguf, tmp_path_factory) -> Path:
    """The real SmolLM2-135M teacher as the teacher stage writes it: the GGUF dequantised once per
    session (~5 s) into a plain fp32 HF directory."""
    from hyena.teachers import TeacherConfig, save_teacher

    out = tmp_path_factory.mktemp("smollm_teacher")
    save_teacher(TeacherConfig(source=str(smollm_gguf)), out)
    return out


@pytest.fixture(scope="session")
def smollm_teacher(smollm_teacher_dir):
    """The real SmolLM2-135M teacher (fp32) from that directory, loaded once per session."""
    from hyena.teachers import load_teacher

    return load_teacher(str(smollm_teacher_dir))


@pytest.fixture(scope="session")
def smollm_tokenizer(smollm_gguf):
    from hyena.teachers import load_tokenizer

    return load_tokenizer(str(smollm_gguf))


def tiny_neox_config(vocab_size: int = 50304, layers: int = 2, d: int = 64, heads: int = 4):
    """A GPT-NeoX config shaped like Pythia (parallel residual, 25% rotary), but tiny."""
    from transformers import GPTNeoXConfig

    return GPTNeoXConfig(
        vocab_size=vocab_size, hidden_size=d, num_hidden_layers=layers, num_attention_heads=heads,
        intermediate_size=4 * d, rotary_pct=0.25, use_parallel_residual=True,
        max_position_embeddings=2048, tie_word_embeddings=False, bos_token_id=0, eos_token_id=0,
    )


def tiny_llama_config(vocab_size: int = 49152, layers: int = 2, d: int = 64, heads: int = 4, kv_heads: int = 2):
    """A Llama config shaped like SmolLM2 (GQA, RMSNorm, tied embeddings), but tiny."""
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=vocab_size, hidden_size=d, num_hidden_layers=layers, num_attention_heads=heads,
        num_key_value_heads=kv_heads, intermediate_size=3 * d, max_position_embeddings=2048,
        tie_word_embeddings=True, bos_token_id=1, eos_token_id=2,
    )


@pytest.fixture
def tiny_neox():
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(tiny_neox_config()).eval()


@pytest.fixture
def tiny_llama():
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(tiny_llama_config()).eval()


def tiny_qwen2_config(vocab_size: int = 512, layers: int = 2, d: int = 64, heads: int = 4, kv_heads: int = 2):
    """A Qwen2 config (GQA with Q/K/V biases, RMSNorm, tied embeddings), tiny."""
    from transformers import Qwen2Config

    return Qwen2Config(
        vocab_size=vocab_size, hidden_size=d, num_hidden_layers=layers, num_attention_heads=heads,
        num_key_value_heads=kv_heads, intermediate_size=2 * d, max_position_embeddings=512,
        tie_word_embeddings=True, bos_token_id=1, eos_token_id=2,
    )


def tiny_qwen3_config(vocab_size: int = 512, layers: int = 2, d: int = 64, heads: int = 4, kv_heads: int = 2):
    """A Qwen3 config (GQA, per-head RMSNorm on queries and keys), tiny."""
    from transformers import Qwen3Config

    return Qwen3Config(
        vocab_size=vocab_size, hidden_size=d, num_hidden_layers=layers, num_attention_heads=heads,
        num_key_value_heads=kv_heads, head_dim=d // heads, intermediate_size=2 * d,
        max_position_embeddings=512, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2,
    )


def tiny_mistral_config(vocab_size: int = 512, layers: int = 2, d: int = 64, heads: int = 4, kv_heads: int = 2,
                        sliding_window: int | None = 8):
    """A Mistral config (GQA, sliding-window attention, shorter than the test sequences), tiny."""
    from transformers import MistralConfig

    return MistralConfig(
        vocab_size=vocab_size, hidden_size=d, num_hidden_layers=layers, num_attention_heads=heads,
        num_key_value_heads=kv_heads, intermediate_size=2 * d, max_position_embeddings=512,
        sliding_window=sliding_window, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2,
    )


def tiny_gpt2_config(vocab_size: int = 512, layers: int = 2, d: int = 64, heads: int = 4, positions: int = 256):
    """A GPT-2 config (Conv1D projections, learned absolute positions, LayerNorm), tiny."""
    from transformers import GPT2Config

    return GPT2Config(vocab_size=vocab_size, n_positions=positions, n_embd=d, n_layer=layers, n_head=heads,
                      bos_token_id=0, eos_token_id=0)


TINY_CONFIGS = {"neox": tiny_neox_config, "llama": tiny_llama_config, "qwen2": tiny_qwen2_config,
                "qwen3": tiny_qwen3_config, "mistral": tiny_mistral_config, "gpt2": tiny_gpt2_config}
NEW_FAMILIES = ("qwen2", "qwen3", "mistral", "gpt2")


def tiny_teacher(family: str, seed: int = 0, **kwargs):
    """A tiny random teacher of `family` (eval mode, vocab 512 unless given). Every 1-D weight
    (biases, norm scales) is moved off its constant init, so that a bias or norm scale that is
    dropped or misplaced shows up in the tests."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    kwargs.setdefault("vocab_size", 512)
    model = AutoModelForCausalLM.from_config(TINY_CONFIGS[family](**kwargs)).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 1:
                p.add_(0.2 * torch.randn_like(p))
    return model


def reference_qkv(attn, config, u: torch.Tensor):
    """q, k, v (B, L, heads * head_dim) of attention block `attn` for its normed input u (B, L, d),
    computed the way the family's own forward computes them, with keys/values repeated for every
    query head (repeat_kv), and no position encoding; plus the output projection (weight, bias)
    as a Linear (B, L, d) -> (B, L, d). Qwen3's queries and keys come out of its per-head RMSNorm.
    Written from the transformers source, independently of hyena.teachers."""
    B, L, d = u.shape
    heads = config.num_attention_heads
    if config.model_type == "gpt2":
        q, k, v = attn.c_attn(u).split(d, dim=2)  # Conv1D: u @ W + b with W (d, 3d)
        return q, k, v, attn.c_proj.weight.T, attn.c_proj.bias
    hd = getattr(config, "head_dim", None) or d // heads
    groups = heads // config.num_key_value_heads
    q = attn.q_proj(u).view(B, L, heads, hd)
    k = attn.k_proj(u).view(B, L, -1, hd)
    if config.model_type == "qwen3":
        q, k = attn.q_norm(q), attn.k_norm(k)
    v = attn.v_proj(u).view(B, L, -1, hd)
    k, v = (t.repeat_interleave(groups, dim=2).reshape(B, L, heads * hd) for t in (k, v))
    return q.reshape(B, L, heads * hd), k, v, attn.o_proj.weight, attn.o_proj.bias


# ---- a small pipeline run, built in-process once per session ------------------------------------


def small_project_params(root: Path, teacher_src: Path, corpus: Path) -> dict:
    """Params of a complete pipeline on a 2-layer, d=64 GPT-NeoX teacher with random weights and a
    few 32-token sequences: every stage runs in about a second."""
    data = root / "data"
    return {
        "paths": {"teacher": str(data / "teacher"), "tokens": str(data / "tokens"),
                  "activations": str(data / "activations.zarr"), "students": str(data / "students"),
                  "checkpoints": str(data / "checkpoints"), "eval": str(data / "eval"), "reports": str(root / "reports")},
        "teacher": {"source": str(teacher_src), "random_init": True},
        "tokenize": {"corpus": str(corpus), "max_documents": 40, "context": 32, "val_fraction": 0.1},
        "dump": {"train_sequences": 8, "val_sequences": 4, "batch_size": 4, "chunk_sequences": 4},
        "student": {"hyena": {"max_len": 64}},
        "distill": {"batch_size": 4, "epochs": 1, "layers": {"01": {"prev": "00"}, "02": {"prev": "01"}}, "last": "02"},
        "finetune": {"batch_size": 4, "max_sequences": 8, "epochs": 1.0, "val_sequences": 4},
        "pretrain": {"batch_size": 4, "max_sequences": 8, "budget": 256, "val_sequences": 4},
        "recurrent": {"fit_len": 64, "context": 32, "max_windows": 1, "fit": {"order": 4, "steps": 0},
                      "calib": {"sequences": 0}, "decode_check_tokens": 4, "error_sequences": 1},
        "eval": {"models": {"finetuned": "finetuned"}, "context": 32, "max_windows": 1, "datasets": {"owt": {"source": "tokenize:val"}},
                 "long_contexts": [], "long_context_datasets": ["owt"], "tasks": [], "reference": ""},
    }


SMALL_STAGES = [["teacher"], ["tokenize"], ["dump-activations"], ["init-student"], ["distill", "--layer", "01"],
                ["distill", "--layer", "02"], ["assemble"], ["finetune"], ["distill-recurrent"]]


def run_stage(params: Path, *args: str):
    """One `hyena-distill` stage in this process; returns the CliRunner result."""
    from typer.testing import CliRunner

    from pipeline.cli import app

    return CliRunner().invoke(app, [*args, "--params", str(params)])


@pytest.fixture(scope="session")
def small_project(tmp_path_factory, pythia_dir, owt_jsonl) -> Path:
    """A project directory (params.yaml, data/, reports/) after every stage up to
    distill-recurrent. Tests must not modify it: copy what they change."""
    import json
    import shutil

    import yaml

    root = tmp_path_factory.mktemp("small_project")
    teacher_src = root / "tiny-neox"  # a config-only teacher source (random_init) with Pythia's tokenizer
    tiny_neox_config(layers=2, d=64).save_pretrained(teacher_src)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(pythia_dir / name, teacher_src / name)
    params = root / "params.yaml"
    params.write_text(yaml.safe_dump(small_project_params(root, teacher_src, owt_jsonl), sort_keys=False))
    for args in SMALL_STAGES:
        result = run_stage(params, *args)
        assert result.exit_code == 0, f"{args}: {result.output}\n{result.exception!r}"
    assert json.loads((root / "reports/metrics/finetune.json").read_text())["steps"] == 2
    return root


# ---- the tiny preset through `dvc repro`, once per session ---------------------------------------

DVC_ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "DVC_NO_ANALYTICS": "1",
           "OMP_NUM_THREADS": str(THREADS), "PYTHONPATH": ""}
GIT = ["git", "-c", "user.email=t@t", "-c", "user.name=t"]


def sh(args, cwd, timeout=1500) -> str:
    """Run a command (dvc, git, `python -m pipeline.X`) in `cwd` with the pipeline's environment;
    its stdout, or a failed assertion with the end of both streams."""
    proc = subprocess.run(args, cwd=cwd, env=DVC_ENV, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(map(str, args))} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


def commit_all(repo: Path, message: str) -> None:
    sh([*GIT, "add", "-A"], repo)
    sh([*GIT, "commit", "-qm", message], repo)


def fresh_project(top: Path, preset: str = "tiny") -> Path:
    """top/repo: a git repository of this checkout's files on `preset`, with no data, reports or
    dvc.lock (those belong to the committed cpu-smoke run), and top/shared linked to ../shared."""
    (top / "shared").symlink_to(SHARED.resolve())
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True,
                           text=True, check=True).stdout.split()
    dst = top / "repo"
    for rel in files:
        if rel.startswith(("data/", "reports/")) or rel == "dvc.lock" or not (ROOT / rel).is_file():
            continue
        (dst / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, dst / rel)
    sh(["python", "-m", "tools.preset", preset], dst)
    sh(["git", "init", "-q"], dst)
    commit_all(dst, preset)
    return dst


def copy_of(repo: Path, top: Path, link_data: bool = False) -> Path:
    """top/repo: a private copy of a finished project `repo` (git history, dvc.lock, params, data/,
    reports/), beside its own link to ../shared, for a test that changes it. Its DVC cache is hard
    links to `repo`'s (DVC writes a cache file once, never in place, so a checkout or a rerun there
    reuses the cache instead of recomputing); its other files are copies, but with `link_data` its
    data/ is hard links too: only for a test that runs no stage there (a `dvc status`, a push)."""
    linked = (".dvc/cache/", "data/") if link_data else (".dvc/cache/",)

    def link_or_copy(src, dst):
        if os.path.relpath(src, repo).startswith(linked):
            os.link(src, dst)
        else:
            shutil.copy2(src, dst)

    (top / "shared").symlink_to(SHARED.resolve())
    dst = top / "repo"
    shutil.copytree(repo, dst, symlinks=True, copy_function=link_or_copy,
                    ignore=lambda d, names: ["tmp"] if Path(d).name == ".dvc" else [])
    return dst


def run_tiny_pipeline(top: Path) -> Path:
    """top/repo: a fresh project on the tiny preset after one `dvc repro` of every stage."""
    repo = fresh_project(top)
    sh(["dvc", "repro"], repo)
    return repo


@pytest.fixture(scope="session")
def tiny_repo(tmp_path_factory) -> Path:
    """The project on the `tiny` preset after one `dvc repro` of every stage, in a temporary git
    repository beside ../shared, built once per test run: under pytest-xdist, the first worker to
    ask builds it in the run's shared temporary directory while the others wait on a file lock.
    Tests only read it (a `dvc status` is fine): one that edits files, reruns stages or commits
    works on `copy_of(tiny_repo, tmp_path)`."""
    from filelock import FileLock

    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent  # this run's directory, above every worker's own
    top, done = base / "tiny_pipeline", base / "tiny_pipeline.done"
    with FileLock(str(base / "tiny_pipeline.lock")):
        if not done.exists():
            shutil.rmtree(top, ignore_errors=True)  # another worker's failed attempt
            top.mkdir()
            run_tiny_pipeline(top)
            done.touch()
    return top / "repo"


@pytest.fixture
def tiny_copy(tiny_repo, tmp_path) -> Path:
    """This test's own copy of the finished tiny run (see copy_of)."""
    return copy_of(tiny_repo, tmp_path)
