"""GPU check: what the project does on one CUDA GPU, recorded in at most ~8 minutes.

    python benchmarks/gpu_check.py [--out DIR] [--shared ../shared] [--budget 480]
    python benchmarks/gpu_check.py --cpu-smoke     # the same plumbing on CPU at toy sizes (< 1 min)

Sections, in this order (each records its result or why it was skipped; one failing does not stop
the others; each stops starting new cells when the time budget runs short):

1. environment: torch / CUDA / GPU, and which optional packages (transformers, dvc, gguf) are there.
2. mixer: the Hyena operator against transformers' LlamaAttention (SDPA: flash attention on the
   GPU) with SmolLM2's shapes (d 576, 9 heads / 3 KV heads) in bf16 autocast (the FFT stays fp32):
   forward at batch 1 from 1K to 64K, forward+backward up to 16K and at the training shape
   (batch 8, L 1024). Median of CUDA-synchronised calls; peak memory per call.
3. decode: real generate() of the teacher, the convolutional student and the recurrent student
   (SmolLM2 shape, random weights), prefill seconds and decode tokens/s at 1K / 16K / 64K.
   batch: bench_batch_generate.py's cells (teacher, recurrent student, hybrid; batches 1-64,
   prompts 512 / 4K, 128 new tokens): generated tokens/s over the batch, peak GPU memory.
4. distill: tokens/s of the distillation step (`hyena.train.distill.distill_layer`) and of the
   CE fine-tune step (`hyena.train.lm.train_lm`) at context 1024, on the SmolLM2 teacher's
   student (the GGUF from --shared when present, else SmolLM2-shaped random weights: the speed
   is the same, the output says which).
5. tiny_preset: `dvc repro` of the tiny preset end to end in a temporary copy of this clone,
   on the GPU (the stages pick cuda by themselves). Needs --shared with models/pythia-70m and
   data/openwebtext/owt_val_1000docs.jsonl, and dvc.

Writes gpu_check.json and gpu_check.md into --out (default: $OUT when set, else
reports/gpu_check) and prints the markdown. Without CUDA (and without --cpu-smoke) it prints one
line and exits 0.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this clone's hyena/ and benchmarks/, installed or not

GGUF = "models/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf"
TINY_NEEDS = ("models/pythia-70m/config.json", "data/openwebtext/owt_val_1000docs.jsonl")


class Budget:
    def __init__(self, seconds: float):
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        return self.end - time.monotonic()


class Skip(Exception):
    """A section that cannot run here; its message says what it needs."""


# ----------------------------------------------------------------------------------------------
# sizes: the real check on a GPU, toy sizes for --cpu-smoke
# ----------------------------------------------------------------------------------------------


def plan(smoke: bool) -> dict:
    if smoke:
        return {"device": "cpu", "dtype": "float32", "mixer_lengths": [128, 256], "mixer_bwd_max": 256,
                "train_shape": (2, 128), "repeats": 1, "decode_prompts": [16, 48], "decode_new": 4,
                "decode_max": 64, "model": "tiny", "context": 64, "distill_steps": 2, "lm_steps": 1,
                "batches": [1, 4], "batch_prompts": [32], "batch_new": 4}
    return {"device": "cuda", "dtype": "bfloat16", "mixer_lengths": [1024, 4096, 16384, 65536],
            "mixer_bwd_max": 16384, "train_shape": (8, 1024), "repeats": 5,
            "decode_prompts": [1024, 16384, 65536], "decode_new": 32, "decode_max": 16384,
            "model": "smollm2", "context": 1024, "distill_steps": 20, "lm_steps": 5,
            "batches": [1, 8, 32, 64], "batch_prompts": [512, 4096], "batch_new": 128}


def model_config(kind: str, max_positions: int):
    from transformers import LlamaConfig

    if kind == "tiny":
        return LlamaConfig(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=max_positions,
                           tie_word_embeddings=True, bos_token_id=1, eos_token_id=2)
    from benchmarks.bench_generate import smollm2_config

    return smollm2_config(max_positions)


def sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


# ----------------------------------------------------------------------------------------------
# sections
# ----------------------------------------------------------------------------------------------


def environment(p: dict, args, budget: Budget) -> dict:
    import torch

    info = {"torch": torch.__version__, "cuda_available": torch.cuda.is_available(), "device": p["device"],
            "python": sys.version.split()[0],
            "packages": {name: importlib.util.find_spec(name) is not None for name in ("transformers", "gguf", "dvc")},
            "dvc_on_path": shutil.which("dvc") is not None,
            "shared": str(args.shared), "shared_present": args.shared.is_dir()}
    if torch.cuda.is_available():
        prop = torch.cuda.get_device_properties(0)
        info.update(gpu=prop.name, gpu_memory_gib=round(prop.total_memory / 2**30, 1), cuda=torch.version.cuda,
                    bf16=torch.cuda.is_bf16_supported())
    return info


def mixer(p: dict, args, budget: Budget) -> dict:
    import torch

    from benchmarks.bench_operator import D_MODEL, build_attention
    from hyena.model.operator import HyenaConfig, HyenaOperator

    dev, amp = p["device"], getattr(torch, p["dtype"])
    max_len = max(p["mixer_lengths"])
    torch.manual_seed(0)
    mods = {"attention": build_attention(max_len).to(dev),
            "hyena": HyenaOperator(D_MODEL, HyenaConfig(max_len=max_len)).to(dev)}
    cells = [(p["train_shape"][0], p["train_shape"][1], "fwdbwd")]
    cells += [(1, L, mode) for L in p["mixer_lengths"] for mode in ("fwd", "fwdbwd")
              if mode == "fwd" or L <= p["mixer_bwd_max"]]
    rows = []
    for B, L, mode in cells:
        if budget.left() < 20:
            rows.append({"B": B, "L": L, "mode": mode, "skipped": "time budget"})
            continue
        row = {"B": B, "L": L, "mode": mode}
        for name, m in mods.items():
            try:
                row[name] = time_mixer(m, B, L, mode, dev, amp, p["repeats"])
            except (torch.cuda.OutOfMemoryError, MemoryError) as err:
                row[name] = {"error": f"out of memory: {str(err)[:80]}"}
        a, h = row["attention"].get("ms"), row["hyena"].get("ms")
        if a and h:
            row["attention_over_hyena"] = round(a / h, 2)
        rows.append(row)
    dtype = f"{p['dtype']} autocast (fp32 FFT)" if dev == "cuda" else "float32"
    return {"dtype": dtype, "d": D_MODEL, "heads": "9 / 3 KV", "rows": rows}


def time_mixer(m, B: int, L: int, mode: str, dev: str, amp, repeats: int) -> dict:
    import torch

    u = torch.randn(B, L, m.attn.config.hidden_size if hasattr(m, "attn") else m.d_model, device=dev)
    grad = mode == "fwdbwd"
    m.train(grad)
    u.requires_grad_(grad)

    def call():
        with torch.autocast(device_type=dev, dtype=amp, enabled=dev == "cuda"):
            if grad:
                m(u).float().sum().backward()
            else:
                with torch.no_grad():
                    m(u)

    call()  # warm-up (kernels, rotary table, filter cache)
    sync(dev)
    if dev == "cuda":
        torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated() if dev == "cuda" else 0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        call()
        sync(dev)
        times.append(time.perf_counter() - t0)
    out = {"ms": round(statistics.median(times) * 1e3, 3)}
    if dev == "cuda":
        out["peak_mib"] = round((torch.cuda.max_memory_allocated() - base) / 2**20, 1)
    return out


def decode(p: dict, args, budget: Budget) -> dict:
    import torch
    from transformers import AutoModelForCausalLM

    from benchmarks import bench_generate as bg
    from hyena.model.build import StudentConfig, build_student
    from hyena.model.operator import HyenaConfig

    dev = p["device"]
    max_len = max(p["decode_prompts"]) + p["decode_new"] + 1
    torch.manual_seed(0)
    teacher = AutoModelForCausalLM.from_config(model_config(p["model"], max_len)).eval()
    student = build_student(teacher, StudentConfig(hyena=HyenaConfig(max_len=p["decode_max"] + p["decode_new"] + 1)))
    models = {"teacher": teacher, "student": student, "recurrent": bg.recurrent_like(student, 16)}
    vocab = teacher.config.vocab_size
    rows = []
    for name, m in models.items():
        m.to(dev).requires_grad_(False)
        m.generate(torch.full((1, 8), 5, device=dev), max_new_tokens=2, do_sample=False, pad_token_id=0)
        for L in p["decode_prompts"]:
            if name == "student" and L > p["decode_max"]:
                continue
            if budget.left() < 15:
                rows.append({"model": name, "prompt": L, "skipped": "time budget"})
                continue
            r = bg.run_generate(m, L, p["decode_new"], vocab=vocab, device=dev)
            rows.append({"model": name, "prompt": L, "prefill_s": round(r["prefill_s"], 4),
                         "decode_tok_s": round(1 / r["decode_s"], 1), "state_mib": round(r["state_bytes"] / 2**20, 2)})
        m.cpu()
    return {"dtype": "float32", "new_tokens": p["decode_new"], "rows": rows}


def batch(p: dict, args, budget: Budget) -> dict:
    """bench_batch_generate.py's cells on the GPU: teacher, recurrent student and hybrid, generated
    tokens/s summed over the batch at batches 1-64 and prompts 512 / 4K (the decode state filled
    to the prompt without a prefill), peak allocated memory per cell; cells whose state alone
    exceeds the memory cap (8 GiB) are not run."""
    import torch

    from benchmarks import bench_batch_generate as bb

    dev, rows = p["device"], []
    config = lambda max_len: model_config(p["model"], max_len)  # noqa: E731
    keep = bb.HYBRID_KEEP if p["model"] == "smollm2" else [1]
    for name in ("teacher", "recurrent", "hybrid"):
        model = bb.build(name, max(p["batch_prompts"]) + p["batch_new"] + 16, config, keep).to(dev)
        bb.timed_generate(name, model, 2, 16, 3, device=dev, sync=lambda: sync(dev))  # warm-up: one-off kernels, allocator
        for L in p["batch_prompts"]:
            for B in p["batches"]:
                if B * bb.analytic_state_bytes(name, L, model) > 8 * 2**30:
                    rows.append({"model": name, "batch": B, "prompt": L, "skipped": "state > 8 GiB"})
                    continue
                if budget.left() < 20:
                    rows.append({"model": name, "batch": B, "prompt": L, "skipped": "time budget"})
                    continue
                if dev == "cuda":
                    torch.cuda.empty_cache()
                    torch.cuda.reset_peak_memory_stats()
                r = bb.timed_generate(name, model, B, L, p["batch_new"], device=dev, sync=lambda: sync(dev))
                peak = torch.cuda.max_memory_allocated() if dev == "cuda" else None
                rows.append({"model": name, "batch": B, "prompt": L, "tok_s": round(r["tok_s"], 1),
                             "ms_per_step": round(r["step_s"] * 1e3, 2),
                             "peak_gib": round(peak / 2**30, 2) if peak is not None else "-"})
        model.cpu()
        del model
    return {"dtype": "float32", "new_tokens": p["batch_new"], "rows": rows}


def distill(p: dict, args, budget: Budget) -> dict:
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM

    from hyena.core.dist import setup
    from hyena.model.build import StudentConfig, build_student
    from hyena.model.operator import HyenaConfig
    from hyena.train.distill import DistillConfig, distill_layer, trainable_fn
    from hyena.train.lm import FinetuneConfig, train_lm

    L = p["context"]
    gguf = args.shared / GGUF
    if p["model"] == "smollm2" and gguf.is_file() and importlib.util.find_spec("gguf"):
        from hyena.teachers import load_teacher

        teacher, weights = load_teacher(str(gguf)), f"SmolLM2-135M GGUF ({gguf})"
    else:
        torch.manual_seed(0)
        teacher = AutoModelForCausalLM.from_config(model_config(p["model"], max(L, 2048))).eval()
        weights = "random weights, SmolLM2 shape" if p["model"] == "smollm2" else "random weights, toy shape"
        if p["model"] == "smollm2":
            weights += f" ({gguf} or the gguf package missing)"
    student = build_student(teacher, StudentConfig(hyena=HyenaConfig(max_len=max(L, 2048))))
    del teacher
    env = setup()
    rng = np.random.default_rng(0)
    d, B = student.config.hidden_size, 8
    i = len(student.decoder_layers()) // 2
    out = {"weights": weights, "device": str(env.device), "amp": str(env.amp_dtype), "context": L, "batch": B}
    x = rng.standard_normal((B * p["distill_steps"], L, d)).astype(np.float32)
    cfg = DistillConfig(batch_size=B, epochs=1, log_every=10**6)
    layer = student.decoder_layers()[i]

    def fn():  # distill_layer freezes what it trained: unfreeze for each run
        return trainable_fn(layer, student.mixer(i), student.adapter.input_norm(layer), cfg)

    distill_layer(fn(), x[:B], x[:B], x[:1], x[:1], cfg, env)  # warm-up
    r = distill_layer(fn(), x, x, x[:1], x[:1], cfg, env)
    out["distill_tokens_per_s"] = round(r["train_tokens"] / r["seconds"], 1)
    if budget.left() > 30:
        tokens = rng.integers(0, student.config.vocab_size, (B * (p["lm_steps"] + 1), L)).astype(np.int32)
        lm_cfg = FinetuneConfig(batch_size=B, epochs=1.0, log_every=10**6, checkpoint_every=10**6, micro_batch_size=B)
        train_lm(student, tokens[:B], tokens[:1], lm_cfg, 1, env)  # warm-up
        r = train_lm(student, tokens[B:], tokens[:1], lm_cfg, p["lm_steps"], env)
        out["finetune_tokens_per_s"] = round(r["train_tokens"] / r["seconds"], 1)
    return out


def tiny_preset(p: dict, args, budget: Budget) -> dict:
    missing = [n for n in TINY_NEEDS if not (args.shared / n).exists()]
    if missing:
        raise Skip(f"needs {', '.join(str(args.shared / n) for n in missing)} (pass --shared DIR, a copy of the project's shared/ folder)")
    if shutil.which("dvc") is None:
        raise Skip("needs dvc on PATH (pip install dvc)")
    stages = ["teacher"] if p["device"] == "cpu" else []  # smoke: the first stage proves the plumbing
    timeout = max(30.0, budget.left() - 5)
    with tempfile.TemporaryDirectory(prefix="gpu_check_tiny_") as top:
        top = Path(top)
        (top / "shared").symlink_to(args.shared.resolve())
        repo = top / "repo"
        files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True,
                               text=True, check=True).stdout.split()
        for rel in files:
            if rel.startswith(("data/", "reports/")) or not (ROOT / rel).is_file():
                continue
            (repo / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, repo / rel)
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "DVC_NO_ANALYTICS": "1",
               "PYTHONPATH": str(repo)}
        git = ["git", "-c", "user.email=c@c", "-c", "user.name=c"]
        for cmd in ([sys.executable, "-m", "tools.preset", "tiny"], git + ["init", "-q"], git + ["add", "-A"],
                    git + ["commit", "-qm", "tiny"]):
            subprocess.run(cmd, cwd=repo, env=env, check=True, capture_output=True, text=True)
        t0 = time.perf_counter()
        try:
            proc = subprocess.run(["dvc", "repro", *stages], cwd=repo, env=env, capture_output=True, text=True,
                                  timeout=timeout)
        except subprocess.TimeoutExpired as err:
            tail = (err.stdout or b"").decode()[-600:] if isinstance(err.stdout, bytes) else (err.stdout or "")[-600:]
            return {"ok": False, "seconds": round(time.perf_counter() - t0, 1), "error": f"timeout after {timeout:.0f} s",
                    "log_tail": tail}
        result = {"ok": proc.returncode == 0, "seconds": round(time.perf_counter() - t0, 1),
                  "stages": stages or "all"}
        if proc.returncode != 0:
            result["log_tail"] = (proc.stdout + proc.stderr)[-1500:]
        report = repo / "data/eval/report.md"
        if report.is_file():
            result["report"] = report.read_text()[:3000]
        timings = repo / "reports/timings"
        if timings.is_dir():
            result["timings"] = {f.stem: json.loads(f.read_text()) for f in sorted(timings.glob("*.json"))}
        return result


SECTIONS = {"environment": environment, "mixer": mixer, "decode": decode, "batch": batch, "distill": distill,
            "tiny_preset": tiny_preset}
NEEDS_TRANSFORMERS = {"mixer", "decode", "batch", "distill", "tiny_preset"}


# ----------------------------------------------------------------------------------------------
# report
# ----------------------------------------------------------------------------------------------


def markdown(results: dict, started: str, seconds: float) -> str:
    lines = [f"# GPU check ({started}, {seconds / 60:.1f} min)", ""]
    for name, r in results.items():
        lines.append(f"## {name}")
        lines.append("")
        if "skipped" in r or "error" in r:
            lines += [f"{'skipped' if 'skipped' in r else 'error'}: {r.get('skipped') or r.get('error')}", ""]
            continue
        rows = r.get("rows")
        if rows:
            keys = list(dict.fromkeys(k for row in rows for k in row))
            lines.append("| " + " | ".join(keys) + " |")
            lines.append("|" + "---|" * len(keys))
            for row in rows:
                lines.append("| " + " | ".join(_cell(row.get(k, "")) for k in keys) + " |")
            lines.append("")
        rest = {k: v for k, v in r.items() if k != "rows"}
        if rest:
            lines += ["```", json.dumps(rest, indent=1, default=str)[:4000], "```", ""]
    return "\n".join(lines)


def _cell(v) -> str:
    if isinstance(v, dict):
        return ", ".join(f"{k} {x}" for k, x in v.items())
    return str(v)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cpu-smoke", action="store_true", help="run every section on CPU at toy sizes (checks the script)")
    ap.add_argument("--out", type=Path, default=Path(os.environ["OUT"]) if os.environ.get("OUT") else ROOT / "reports/gpu_check")
    ap.add_argument("--shared", type=Path, default=ROOT.parent / "shared", help="the project's shared/ folder (teachers, data)")
    ap.add_argument("--budget", type=float, default=480.0, help="seconds for the whole check")
    ap.add_argument("--sections", nargs="+", default=list(SECTIONS), choices=list(SECTIONS))
    args = ap.parse_args()
    try:
        import torch
    except ImportError:
        print("gpu_check: torch is not installed: nothing to check")
        return 0
    if not args.cpu_smoke and not torch.cuda.is_available():
        print("gpu_check: no CUDA device here (torch.cuda.is_available() is False): nothing to check")
        return 0
    p = plan(args.cpu_smoke)
    budget = Budget(args.budget)
    started, t0 = time.strftime("%Y-%m-%d %H:%M"), time.perf_counter()
    have_transformers = importlib.util.find_spec("transformers") is not None
    results = {}
    for name in args.sections:
        s0 = time.perf_counter()
        try:
            if name in NEEDS_TRANSFORMERS and not have_transformers:
                raise Skip("needs the transformers package")
            results[name] = SECTIONS[name](p, args, budget)
        except Skip as why:
            results[name] = {"skipped": str(why)}
        except Exception as err:  # one broken section must not lose the others' results
            results[name] = {"error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc()[-2000:]}
        results[name]["section_seconds"] = round(time.perf_counter() - s0, 1)
        print(f"gpu_check: {name} done in {results[name]['section_seconds']} s", file=sys.stderr, flush=True)
    text = markdown(results, started, time.perf_counter() - t0)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu_check.json").write_text(json.dumps(results, indent=1, default=str) + "\n")
    (args.out / "gpu_check.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
