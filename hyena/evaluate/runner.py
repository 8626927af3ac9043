"""Evaluate a list of models (name -> path) on perplexity and zero-shot tasks; write the outputs.

A model path is an HF-format directory (students: `import hyena.student` registers their
class), a `.gguf` file, a hub id, or the word `teacher` (the params' teacher.source). Models
are loaded one at a time and freed, so memory holds one model at once.
"""

from __future__ import annotations

import gc
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from hyena.evaluate import harness, perplexity, streams
from hyena.evaluate.report import flat_metrics, load_reference, render_report
from hyena.io import atomic_write_json, atomic_write_text

DEFAULT_TASKS = list(harness.TASKS)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model")


@dataclass
class EvalConfig:
    models: dict[str, str] = field(default_factory=lambda: {"teacher": "teacher"})  # report name -> model path ("teacher" = teacher.source)
    tokenizer: str = ""  # tokenizer for a model dir without one; "" = the student's recorded teacher_source, else teacher.source
    device: str = "auto"  # "auto" = cuda if available else cpu; always fp32
    context: int = 1024  # perplexity context (Table 1)
    stride: int = 0  # sliding-window stride (score only the last `stride` tokens of a window); 0 = non-overlapping
    max_windows: int = 0  # windows per dataset at `context`; 0 = every full window
    batch_size: int = 1  # windows per forward pass
    datasets: list[str] = field(default_factory=lambda: ["wikitext", "owt"])  # Table 1 datasets
    owt_tokens: str = "data/tokens"  # tokenize stage output holding val.npy (teacher-tokenised OWT)
    wikitext: str = "../shared/data/wikitext-2-raw/wiki.test.raw"  # raw test file or hub:wikitext/wikitext-103-raw-v1
    long_contexts: list[int] = field(default_factory=lambda: [2048, 4096, 8192])  # extra contexts for the extrapolation curve
    long_context_datasets: list[str] = field(default_factory=lambda: ["wikitext"])  # datasets the curve is computed on
    long_max_windows: int = 2  # windows per long context; 0 = all
    tasks: list[str] = field(default_factory=lambda: list(DEFAULT_TASKS))  # lm-eval task keys; [] skips lm-eval
    task_source: str = "local"  # local = shipped offline task YAMLs reading task_data_dir; builtin = lm-eval's own tasks (hub)
    task_data_dir: str = "../shared/eval"  # data of the offline tasks
    limit: int = 0  # examples per task; 0 = all
    lm_eval_batch_size: int = 8  # lm-eval batch size
    reference: str = "../shared/eval/pythia_reference_results/pythia-70m_zero-shot_step143000.json"  # published lm-eval results for the reference column; "" = none

    def __post_init__(self):
        if not self.models:
            raise ValueError("eval.models is empty: give at least one name: path")
        for name in ("context", "batch_size", "lm_eval_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"eval.{name} must be >= 1, got {getattr(self, name)}")
        if not 0 <= self.stride <= self.context:
            raise ValueError(f"eval.stride must be in [0, context={self.context}], got {self.stride}")
        bad = [d for d in {*self.datasets, *self.long_context_datasets} if d not in ("wikitext", "owt")]
        if bad:
            raise ValueError(f"eval datasets must be 'wikitext' or 'owt', got {bad}")


def resolve_device(device: str) -> str:
    return ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device


def load_model(path: str, teacher_source: str = "", device: str = "cpu"):
    """An fp32 causal LM in eval mode from a directory, .gguf file, hub id or 'teacher'."""
    from transformers import AutoModelForCausalLM

    from hyena.teachers import load_teacher

    try:  # registers the Hyena student classes with the Auto* factories
        import hyena.student  # noqa: F401
    except ImportError:
        pass
    if path == "teacher":
        if not teacher_source:
            raise ValueError("model path 'teacher' needs params teacher.source")
        path = teacher_source
    p = Path(path)
    if path.endswith(".gguf"):
        model = load_teacher(path)
    elif p.is_dir():
        if not (p / "config.json").is_file():
            raise FileNotFoundError(f"model directory {p} has no config.json (not an HF-format model dir)")
        model = AutoModelForCausalLM.from_pretrained(str(p), dtype=torch.float32)
    elif p.exists():
        raise FileNotFoundError(f"model path {path} is a file: give an HF-format directory, a .gguf file or a hub id")
    else:
        try:
            model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
        except OSError as err:
            raise FileNotFoundError(f"model not found: {path} (not a local directory, and the hub could not provide it: {type(err).__name__})") from err
    return model.to(device).eval().requires_grad_(False)


def load_model_tokenizer(path: str, model, fallbacks: list[str]):
    """The model's own tokenizer if its dir/id has one, else the first loadable fallback source."""
    from transformers import AutoTokenizer

    from hyena.teachers import load_tokenizer

    candidates = [] if path == "teacher" else [path]
    recorded = getattr(model.config, "teacher_source", "")  # students record their teacher
    candidates += [c for c in [recorded, *fallbacks] if c]
    errors = []
    for source in candidates:
        if Path(source).is_dir() and not any((Path(source) / f).is_file() for f in TOKENIZER_FILES):
            # transformers 5 would build an EMPTY tokenizer from a bare model dir: never use that
            errors.append(f"{source}: no tokenizer files")
            continue
        try:
            tok = load_tokenizer(source) if source.endswith(".gguf") else AutoTokenizer.from_pretrained(source)
        except (OSError, ValueError, TypeError) as err:
            errors.append(f"{source}: {type(err).__name__}")
            continue
        if len(tok) < 2:
            errors.append(f"{source}: empty vocabulary")
            continue
        return tok, source
    raise FileNotFoundError(f"no tokenizer for model {path} (tried {'; '.join(errors)}); set eval.tokenizer")


def max_positions(model) -> int | None:
    cfg = model.config
    hyena_cfg = getattr(cfg, "hyena", None)
    if isinstance(hyena_cfg, dict) and hyena_cfg.get("max_len"):
        return int(hyena_cfg["max_len"])
    return getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", None)


def _na_reason(err: BaseException) -> str:
    msg = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return f"{type(err).__name__}: {msg}"[:160]


def model_perplexities(model, token_streams: dict[str, object], cfg: EvalConfig, device: str, name: str) -> dict:
    """{dataset: {str(context): PerplexityResult dict | {"na": reason}}} at cfg.context and the long contexts."""
    out: dict[str, dict] = {}
    plan = [(ds, cfg.context, cfg.max_windows) for ds in cfg.datasets]
    plan += [(ds, c, cfg.long_max_windows) for ds in cfg.long_context_datasets for c in cfg.long_contexts if c != cfg.context]
    for ds, ctx, max_windows in plan:
        tokens = token_streams[ds]
        stride = cfg.stride if ctx == cfg.context and cfg.stride else ctx
        if isinstance(tokens, str):  # the stream itself could not be built
            entry = {"na": tokens}
        elif len(tokens) < ctx:
            entry = {"na": f"needs {ctx} tokens, the data has {len(tokens)}"}
        else:
            try:
                entry = perplexity.stream_perplexity(
                    model, tokens, context=ctx, stride=stride, max_windows=max_windows or None,
                    batch_size=cfg.batch_size, device=device, desc=f"{name} {ds} ctx{ctx}",
                ).to_dict()
            except (RuntimeError, ValueError, IndexError, torch.OutOfMemoryError) as err:
                # e.g. a Hyena filter shorter than the context, absolute positions running out, OOM
                entry = {"na": _na_reason(err)}
        out.setdefault(ds, {})[str(ctx)] = entry
    return out


def evaluate_models(cfg: EvalConfig, teacher_source: str = "", teacher_loader: Callable[[], object] | None = None) -> dict:
    """Run every evaluation for every model in cfg.models; returns the results dict (see report.py).

    A model path "teacher" is built by `teacher_loader()` when given (e.g. a seeded random-init
    teacher, as the other stages build it), else loaded from `teacher_source`.
    """
    device = resolve_device(cfg.device)
    # Check inputs that do not depend on a model before spending time on one.
    owt = streams.load_owt_val(cfg.owt_tokens) if "owt" in {*cfg.datasets, *cfg.long_context_datasets} else None
    wikitext_text = streams.read_wikitext(cfg.wikitext) if "wikitext" in {*cfg.datasets, *cfg.long_context_datasets} else None
    if cfg.tasks and cfg.task_source == "local":
        with harness.prepared_tasks(cfg.task_data_dir, cfg.tasks):
            pass
    if cfg.reference:
        load_reference(cfg.reference)
    fallbacks = [cfg.tokenizer, teacher_source]
    wikitext_cache: dict[str, object] = {}
    results = {"settings": {**asdict(cfg), "device": device, "teacher_source": teacher_source,
                            "dataset_sources": {}}, "models": {}}
    if owt is not None:
        results["settings"]["dataset_sources"]["owt"] = (
            f"OpenWebText validation split of the tokenize stage ({cfg.owt_tokens}/val.npy, {len(owt)} teacher tokens, rows concatenated in order)"
        )
    for name, path in cfg.models.items():
        if path == "teacher" and teacher_loader is not None:
            model = teacher_loader().to(device).eval().requires_grad_(False)
        else:
            model = load_model(path, teacher_source, device)
        tokenizer, tok_source = load_model_tokenizer(path, model, fallbacks)
        token_streams: dict[str, object] = {"owt": owt}
        if wikitext_text is not None:
            if tok_source not in wikitext_cache:
                wikitext_cache[tok_source] = streams.tokenize_stream(tokenizer, wikitext_text)
            token_streams["wikitext"] = wikitext_cache[tok_source]
            results["settings"]["dataset_sources"]["wikitext"] = (
                f"WikiText test ({cfg.wikitext}) tokenised as one stream with each model's tokenizer, no special tokens "
                f"({len(wikitext_cache[tok_source])} tokens with {tok_source})"
            )
        entry = {
            "path": path if path != "teacher" else f"teacher ({teacher_source})",
            "tokenizer": tok_source,
            "n_params": sum(p.numel() for p in model.parameters()),
            "max_positions": max_positions(model),
            "ppl": model_perplexities(model, token_streams, cfg, device, name),
        }
        if cfg.tasks:
            try:
                entry["tasks"] = harness.run_tasks(
                    model, tokenizer, cfg.tasks, source=cfg.task_source, data_dir=cfg.task_data_dir,
                    limit=cfg.limit or None, batch_size=cfg.lm_eval_batch_size, device=device,
                )
            except (AssertionError, RuntimeError, IndexError, torch.OutOfMemoryError) as err:
                # lm-eval cannot run this model (e.g. prompts longer than its positions): say so in the report
                entry["tasks"], entry["tasks_na"] = {}, _na_reason(err)
                print(f"warning: lm-eval failed for model {name}: {entry['tasks_na']}", file=sys.stderr)
        results["models"][name] = entry
        del model
        gc.collect()
    return results


def write_outputs(results: dict, out_dir: str | Path, reference: str = "") -> dict[str, Path]:
    """metrics.json (flat, for DVC), results.json (everything), report.md, ppl.png, ppl_vs_context.png."""
    from hyena.evaluate.plots import plot_ppl, plot_ppl_vs_context

    out_dir = Path(out_dir)
    ref = load_reference(reference) if reference else None
    paths = {k: out_dir / v for k, v in {
        "metrics": "metrics.json", "results": "results.json", "report": "report.md",
        "ppl_plot": "ppl.png", "context_plot": "ppl_vs_context.png"}.items()}
    report = render_report(results, ref)  # render before writing anything: a failure leaves no partial set
    atomic_write_json(paths["results"], results)
    atomic_write_text(paths["report"], report)
    plot_ppl(results, paths["ppl_plot"])
    plot_ppl_vs_context(results, paths["context_plot"])
    atomic_write_json(paths["metrics"], flat_metrics(results))  # last: marks a complete run
    return paths
