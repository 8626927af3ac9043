"""Evaluate a list of models (name -> path) on perplexity and zero-shot tasks; write the outputs.

A model path is an HF-format directory (students: `import hyena.model.modeling` registers their
class), a `.gguf` file, a hub id, or the word `teacher` (the params' teacher.source). Models
are loaded one at a time and freed, so memory holds one model at once.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import shutil
import sys
from dataclasses import asdict
from pathlib import Path

import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM, AutoTokenizer

import hyena.recurrence  # noqa: F401
from hyena.core.io import (
    CorruptInputError,
    atomic_write_json,
    atomic_write_text,
    reading_weights,
    remove_leftovers,
)
from hyena.core.runtime import resolve_device
from hyena.data.tokens import load_manifest, tokenizer_sha256, vocab_sha256
from hyena.evaluate import harness, passkey, perplexity, positions, streams
from hyena.evaluate.config import EvalConfig
from hyena.evaluate.plots import plot_positions, plot_ppl, plot_ppl_vs_context
from hyena.evaluate.report import flat_metrics, load_reference, render_report
from hyena.teachers import has_tokenizer, load_teacher, load_tokenizer, read_gguf

DEFAULT_TASKS = list(harness.TASKS)


def load_model(source: str, device: str | torch.device = "cpu"):
    """An fp32 causal LM in eval mode from an HF directory, a .gguf file or a hub id (students and
    recurrent students included: importing hyena.recurrence registers their classes)."""


    p = Path(source)
    if source.endswith(".gguf"):
        model = load_teacher(source)
    elif p.is_dir():
        if not (p / "config.json").is_file():
            raise FileNotFoundError(f"model directory {p} has no config.json (not an HF-format model dir)")
        with reading_weights(p):
            model = AutoModelForCausalLM.from_pretrained(str(p), dtype=torch.float32)
    elif p.exists():
        raise FileNotFoundError(f"model path {source} is a file: give an HF-format directory, a .gguf file or a hub id")
    else:
        try:
            model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
        except OSError as err:
            raise FileNotFoundError(f"model not found: {source} (not a local directory, and the hub could not provide it: {type(err).__name__})") from err
    return model.to(device).eval().requires_grad_(False)


def load_model_tokenizer(source: str, model, fallbacks: list[str]):
    """The model's own tokenizer if its dir/id has one, else the first loadable fallback source."""


    recorded = getattr(model.config, "teacher_source", "")  # students record their teacher
    candidates = [c for c in [source, recorded, *fallbacks] if c]
    errors = []
    for cand in candidates:
        if Path(cand).is_dir() and not has_tokenizer(cand):
            # transformers 5 would build an EMPTY tokenizer from a bare model dir: never use that
            errors.append(f"{cand}: no tokenizer files")
            continue
        try:
            tok = load_tokenizer(cand) if cand.endswith(".gguf") else AutoTokenizer.from_pretrained(cand)
        except (OSError, ValueError, TypeError, RuntimeError) as err:
            errors.append(f"{cand}: {type(err).__name__}")
            continue
        if len(tok) < 2:
            errors.append(f"{cand}: empty vocabulary")
            continue
        return tok, cand
    raise FileNotFoundError(f"no tokenizer for model {source} (tried {'; '.join(errors)}); set eval.tokenizer")


def max_positions(model) -> int | None:
    """The longest input of any HF model (a student's Hyena max_len, else its config's positions)."""
    config = model.config  # an HF config of any family: which fields it has depends on the family
    hyena_cfg = getattr(config, "hyena", None)
    if isinstance(hyena_cfg, dict) and hyena_cfg.get("max_len"):
        return int(hyena_cfg["max_len"])
    return getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)


def declared_limits(source: str) -> tuple[int | None, int | None]:
    """(max positions, modal fit_len) that a local model directory's config.json declares, read
    without loading the model; (None, None) for other sources."""
    try:
        cfg = json.loads((Path(source) / "config.json").read_text())
    except (OSError, ValueError):
        return None, None
    positions = (cfg.get("hyena") or {}).get("max_len") or cfg.get("max_position_embeddings") or cfg.get("n_positions")
    return positions, (cfg.get("modal") or {}).get("fit_len")


def check_context(cfg: EvalConfig) -> None:
    """Refuse, before any model runs, an eval.context that a model cannot take: Table 1 would have
    no number for it (longer extra contexts are only marked n/a in the report)."""
    for name, source in cfg.models.items():
        positions, fit_len = declared_limits(source)
        if positions and cfg.context > positions:
            raise ValueError(f"eval.context {cfg.context} exceeds the {positions} positions of model {name} ({source}): "
                             "lower eval.context, or build that student with a larger student.hyena.max_len")
        if fit_len and cfg.context > fit_len:
            raise ValueError(f"eval.context {cfg.context} exceeds the {fit_len} filter taps model {name} ({source}) was "
                             "fitted on: lower eval.context or raise recurrent.fit_len")


WEIGHT_FILES = ("*.safetensors", "pytorch_model*.bin")


def check_model_sources(models: dict[str, str]) -> None:
    """Refuse, before any model runs, a local model that cannot load, so that a damaged second
    model does not fail the stage after the first one's evaluation: a .gguf file's header and
    tensor table must parse and its tensor data fit the file; a directory needs a config.json
    that is a JSON object and weights whose safetensors headers parse and cover their files.
    Cheap (headers only); hub ids are left to the load."""



    for name, source in models.items():
        p = Path(source)
        fix = f"re-download it, or fix eval.models.{name}"
        if source.endswith(".gguf"):
            read_gguf(source, fix)
        elif p.is_dir():
            fix = f"the directory is damaged: rerun the stage that writes it, or fix eval.models.{name}"
            try:
                config = json.loads((p / "config.json").read_text())
            except FileNotFoundError:
                raise FileNotFoundError(f"model directory {p} has no config.json (not an HF-format model dir): "
                                        f"fix eval.models.{name}") from None
            except (OSError, ValueError):
                config = None
            if not isinstance(config, dict):
                raise CorruptInputError(f"{p / 'config.json'} is not a JSON object: {fix}")
            files = sorted(f for pattern in WEIGHT_FILES for f in p.glob(pattern))
            if not files:
                raise FileNotFoundError(f"{p} has no model weights (model.safetensors): {fix}")
            for weights in (f for f in files if f.suffix == ".safetensors"):
                with reading_weights(weights, fix):
                    with safe_open(str(weights), "pt"):
                        pass


def _na_reason(err: BaseException) -> str:
    msg = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return f"{type(err).__name__}: {msg}"[:160]


def model_perplexities(model, token_streams: dict[str, object], cfg: EvalConfig, device: str, name: str) -> dict:
    """{dataset: {str(context): PerplexityResult dict | {"na": reason}}} at cfg.context and the long contexts."""
    out: dict[str, dict] = {}
    fit_len = (getattr(model.config, "modal", None) or {}).get("fit_len")  # a recurrent student's fitted taps
    plan = [(ds, cfg.context, cfg.max_windows) for ds in cfg.datasets]
    plan += [(ds, c, cfg.long_max_windows) for ds in cfg.long_context_datasets for c in cfg.long_contexts if c != cfg.context]
    for ds, ctx, max_windows in plan:
        tokens = token_streams[ds]
        stride = cfg.stride if ctx == cfg.context and cfg.stride else ctx
        if isinstance(tokens, str):  # the stream itself could not be built
            entry = {"na": tokens}
        elif len(tokens) < ctx:
            entry = {"na": f"needs {ctx} tokens, the data has {len(tokens)}"}
        elif fit_len and ctx > fit_len:
            entry = {"na": f"its modal filters were fitted on {fit_len} taps (recurrent.fit_len)"}
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


def _dataset_inputs(cfg: EvalConfig, tokens_dir: str | Path) -> tuple[dict, dict, dict]:
    """Read every dataset before any model is loaded: (token streams shared by every model,
    texts each model tokenises itself, one-line source descriptions)."""
    shared, texts, sources = {}, {}, {}
    for name, src in cfg.datasets.items():
        if src.tokenized:
            try:
                shared[name] = streams.load_owt_val(tokens_dir)
            except FileNotFoundError as err:
                raise FileNotFoundError(f"eval.datasets.{name}: {err}") from None
            sources[name] = (f"validation split of the tokenize stage ({tokens_dir}/val.npy, {len(shared[name])} "
                             "teacher tokens, rows concatenated in order)")
        else:
            texts[name] = streams.read_text(name, src)
            sources[name] = (f"{streams.describe(src, texts[name])}, tokenised as one stream with each model's "
                             "tokenizer, no special tokens")
    return shared, texts, sources


def evaluate_models(cfg: EvalConfig, tokens_dir: str | Path = "", labels: dict[str, str] | None = None,
                    tokenizer_fallback: str = "") -> dict:
    """Run every evaluation for every model in cfg.models (name -> source: an HF dir, .gguf or hub
    id); returns the results dict (see report.py). `tokens_dir` is the tokenize output whose
    val.npy serves `tokenize:val` datasets; `labels` optionally say where a source came from in
    the report; `tokenizer_fallback` serves models without a tokenizer of their own after
    `cfg.tokenizer`."""
    device = str(resolve_device(cfg.device))
    # Check inputs that do not depend on a model before spending time on one.
    check_context(cfg)
    shared, texts, sources = _dataset_inputs(cfg, tokens_dir)
    check_model_sources(cfg.models)
    if cfg.tasks and cfg.task_source == "local":
        with harness.prepared_tasks(cfg.task_data_dir, cfg.tasks):
            pass
    user_tasks = harness.user_tasks(cfg.include_path, cfg.include_tasks) if cfg.include_path else []
    if cfg.reference:
        load_reference(cfg.reference)
    fallbacks = [cfg.tokenizer, tokenizer_fallback]
    tokenized: dict[tuple[str, str], object] = {}  # (dataset, tokenizer hash) -> stream: each text tokenised once per tokenizer
    long_docs = positions.read_documents(cfg.positions) if cfg.positions.context else []
    results = {"settings": {**asdict(cfg), "device": device, "dataset_sources": dict(sources),
                            "user_tasks": user_tasks}, "models": {}}
    for name, path in cfg.models.items():
        model = load_model(path, device)
        tokenizer, tok_source = load_model_tokenizer(path, model, fallbacks)
        tok_key = tokenizer_sha256(tokenizer)
        token_streams: dict[str, object] = dict(shared)
        if shared and not same_tokenizer(tokens_dir, tokenizer):
            for ds in shared:  # the tokenize stage's rows: made with the teacher's tokenizer
                token_streams[ds] = f"the tokenize stage's rows ({tokens_dir}) were made with another tokenizer than this model's"
        for ds, text in texts.items():
            if (ds, tok_key) not in tokenized:
                tokenized[ds, tok_key] = streams.tokenize_stream(tokenizer, text)
            token_streams[ds] = tokenized[ds, tok_key]
            results["settings"]["dataset_sources"][ds] = f"{sources[ds]} ({len(token_streams[ds])} tokens with {tok_source})"
        entry = {
            "path": (labels or {}).get(name, path),
            "tokenizer": tok_source,
            "n_params": sum(p.numel() for p in model.parameters()),
            "max_positions": max_positions(model),
            "ppl": model_perplexities(model, token_streams, cfg, device, name),
        }
        if long_docs and name in cfg.positions.skip_models:
            entry["positions"] = {"na": SKIPPED.format(section="positions")}
        elif long_docs:
            if (POSITIONS, tok_key) not in tokenized:
                try:
                    tokenized[POSITIONS, tok_key] = positions.cut_windows(
                        [streams.tokenize_stream(tokenizer, d) for d in long_docs], cfg.positions.context, cfg.positions.windows)
                except ValueError as err:  # documents too short in this tokenizer: n/a, not a failed stage
                    tokenized[POSITIONS, tok_key] = str(err)
            with probe_autocast(cfg.probe_precision, device, model):
                entry["positions"] = model_long_context(model, tokenized[POSITIONS, tok_key], cfg, device, name)
        if cfg.passkey.lengths and name in cfg.passkey.skip_models:
            entry["passkey"] = {str(n): {"na": SKIPPED.format(section="passkey")} for n in cfg.passkey.lengths}
        elif cfg.passkey.lengths:
            with probe_autocast(cfg.probe_precision, device, model):
                entry["passkey"] = passkey.model_passkey(model, tokenizer, cfg.passkey, device, name, context_limit(model))
        if cfg.tasks or user_tasks:
            entry.update(model_tasks(model, tokenizer, cfg, user_tasks, device, name))
        results["models"][name] = entry
        del model
        gc.collect()
    return results


@contextlib.contextmanager
def probe_autocast(precision: str, device: str, model=None):
    """bf16 autocast around a long-context probe (eval.probe_precision), or nothing for fp32. The
    model stays fp32: autocast runs its matmuls in bf16 and keeps norms, softmax and the Hyena
    FFTs in fp32. Hyena filters are cached at inference whatever precision made them, so the
    model's caches are dropped on the way in and out: the probe makes its own, and the fp32
    scoring after it (the tasks) does not reuse filters made under bf16."""
    if precision == "fp32":
        yield
        return
    clear_filter_caches(model)
    try:
        with torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16):
            yield
    finally:
        clear_filter_caches(model)


def clear_filter_caches(model) -> None:
    """Drop every cached Hyena filter of `model` (None: nothing to do)."""
    for module in model.modules() if model is not None else ():
        if hasattr(module, "clear_cache"):
            module.clear_cache()


POSITIONS = "positions"  # key of the position curve's windows in the per-tokenizer cache
SKIPPED = "skipped (eval.{section}.skip_models)"


def model_tasks(model, tokenizer, cfg: EvalConfig, user_tasks: list[str], device: str, name: str) -> dict:
    """{"tasks": lm-eval results} of one model on cfg.tasks and `user_tasks`; where lm-eval cannot
    run the model (e.g. prompts longer than its positions), {} and the reason under "tasks_na"."""
    try:
        return {"tasks": harness.run_tasks(
            model, tokenizer, cfg.tasks, source=cfg.task_source, data_dir=cfg.task_data_dir,
            limit=cfg.limit or None, batch_size=cfg.lm_eval_batch_size, device=device,
            include_path=cfg.include_path, include_tasks=user_tasks,
        )}
    except (AssertionError, RuntimeError, IndexError, torch.OutOfMemoryError) as err:
        reason = _na_reason(err)
        print(f"warning: lm-eval failed for model {name}: {reason}", file=sys.stderr)
        return {"tasks": {}, "tasks_na": reason}


def context_limit(model) -> int | None:
    """The longest input a model can score: its positions, or a recurrent student's fitted taps."""
    fit_len = (getattr(model.config, "modal", None) or {}).get("fit_len")
    limits = [n for n in (max_positions(model), fit_len) if n]
    return min(limits) if limits else None


def model_long_context(model, windows, cfg: EvalConfig, device: str, name: str) -> dict:
    """The position curve of one model, or {"na": reason} when its windows are too long for it
    (`windows` is a reason already when the documents could not fill one)."""
    if isinstance(windows, str):
        return {"na": windows}
    limit = context_limit(model)
    if limit and windows.shape[1] > limit:
        return {"na": f"windows of {windows.shape[1]} tokens exceed the model's {limit} positions or fitted taps"}
    try:
        return positions.model_positions(model, windows, cfg.positions, device, name)
    except (RuntimeError, ValueError, torch.OutOfMemoryError) as err:
        return {"na": _na_reason(err)}


def same_tokenizer(tokens_dir: str | Path, tokenizer) -> bool:
    """Whether the tokenize stage's rows in `tokens_dir` were made with `tokenizer` (True when the
    manifest does not say)."""
    try:
        recorded = load_manifest(tokens_dir).get("tokenizer", {}).get("vocab_sha256")
    except FileNotFoundError:
        return True  # a bare val.npy: nothing recorded to compare
    return not recorded or recorded == vocab_sha256(tokenizer)


def write_outputs(results: dict, out_dir: str | Path, reference: str = "") -> dict[str, Path]:
    """metrics.json (flat, for DVC), results.json (everything), report.md, ppl.png, ppl_vs_context.png,
    ppl_by_position.png.

    All six are made in a temporary directory first and moved into place only when every one of
    them was written: a failure leaves the previous set (or nothing) behind, never a mix."""


    out_dir = Path(out_dir)
    ref = load_reference(reference) if reference else None
    names = {"metrics": "metrics.json", "results": "results.json", "report": "report.md",
             "ppl_plot": "ppl.png", "context_plot": "ppl_vs_context.png", "positions_plot": "ppl_by_position.png"}
    out_dir.mkdir(parents=True, exist_ok=True)
    remove_leftovers(out_dir / "eval-outputs")  # what a killed run left
    tmp = out_dir / f".eval-outputs.tmp-{os.getpid()}"
    tmp.mkdir()
    try:
        atomic_write_json(tmp / names["results"], results)
        atomic_write_text(tmp / names["report"], render_report(results, ref))
        plot_ppl(results, tmp / names["ppl_plot"])
        plot_ppl_vs_context(results, tmp / names["context_plot"])
        plot_positions(results, tmp / names["positions_plot"])
        atomic_write_json(tmp / names["metrics"], flat_metrics(results))
        for key in ("results", "report", "ppl_plot", "context_plot", "positions_plot", "metrics"):  # metrics last: a complete run
            os.replace(tmp / names[key], out_dir / names[key])
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {k: out_dir / v for k, v in names.items()}
