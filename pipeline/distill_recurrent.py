"""`distill_recurrent` stage: Laughing Hyena distillation of the fine-tuned student.

Every long filter of `recurrent.student` is fitted with `recurrent.order` complex modes over
`recurrent.fit_len` taps, then (with `recurrent.calib_sequences` > 0) calibrated on the student's
own activations for that many training windows: residues re-solved for each mixer's output error
and optionally `recurrent.calib_steps` Adam steps on it (hyena/recurrence/calibrate.py). The
recurrent student (HF dir, model_type "hyena_recurrent_student") goes to `recurrent.out`;
`recurrent.metrics` gets per-layer fit quality (relative L2 error of the filters and of each
mixer's output on real validation activations), the perplexity of both students on the same
OpenWebText validation windows, and a decode check (prefill + recurrent steps vs the stateless
forward pass); `recurrent.plot` draws the per-layer errors.

    python -m pipeline.distill_recurrent [--params params.yaml]
"""

from __future__ import annotations

import dataclasses
import shutil
import time
from pathlib import Path

import typer

from pipeline.common import PARAMS, StageError, load_params, one_line_errors, section, write_metrics

app = typer.Typer(add_completion=False)

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json",
                   "merges.txt", "tokenizer.model", "chat_template.jinja")


@dataclasses.dataclass
class RecurrentParams:
    student: str = "data/students/finetuned"  # convolutional student to distil (HF dir)
    out: str = "data/students/recurrent"  # where the recurrent student is written (HF dir)
    metrics: str = "reports/metrics/recurrent.json"  # fit quality + perplexities
    plot: str = "reports/plots/recurrent_fit.png"  # per-layer filter and mixer-output errors
    order: int = 16  # N complex modes per channel (Laughing Hyena: ~16)
    fit_len: int = 2048  # filter taps fitted (>= the longest context you evaluate/generate at)
    steps: int = 300  # Adam steps on channels the pencil init leaves above refine_tol (0: none)
    lr: float = 1.0e-2  # Adam learning rate of those steps (targets are RMS-normalised)
    refine_tol: float = 1.0e-3  # relative L2 filter error under which a channel is not refined
    min_decay: float = 1.0e-6  # poles satisfy |p| <= exp(-min_decay) < 1
    calib_sequences: int = 2  # training windows whose activations calibrate the fits (0: filters only, as the paper)
    calib_filter_weight: float = 0.01  # weight of the plain filter error next to the mixer-output error
    calib_steps: int = 0  # Adam steps on each mixer's output error after the closed-form residues
    calib_lr: float = 3.0e-3  # learning rate of those steps
    tokens: str = "data/tokens"  # tokenize output; its val.npy gives the evaluation windows
    context: int = 512  # perplexity window (tokens)
    max_windows: int = 4  # perplexity windows (0: all)
    batch_size: int = 1  # windows per forward pass
    error_sequences: int = 2  # validation windows for the per-layer mixer output error
    decode_check_tokens: int = 16  # tokens decoded recurrently after a prefill and compared (0: skip)

    def __post_init__(self) -> None:
        for name in ("order", "fit_len", "context", "batch_size", "error_sequences"):
            if getattr(self, name) < 1:
                raise ValueError(f"recurrent.{name} must be >= 1 (got {getattr(self, name)})")
        if self.calib_sequences < 0 or self.calib_steps < 0:
            raise ValueError("recurrent.calib_sequences and recurrent.calib_steps must be >= 0")
        if self.fit_len < 3:
            raise ValueError(f"recurrent.fit_len must be >= 3 (got {self.fit_len})")


def _load_student(path: str):
    import torch
    from transformers import AutoModelForCausalLM

    import hyena.recurrence  # noqa: F401  (registers the student classes)
    from hyena.student import HyenaStudentForCausalLM

    p = Path(path)
    if not (p / "config.json").is_file():
        raise StageError(f"recurrent.student {path} is not an HF model directory (no config.json): run the finetune stage or fix recurrent.student")
    model = AutoModelForCausalLM.from_pretrained(str(p), dtype=torch.float32)
    if type(model) is not HyenaStudentForCausalLM:
        raise StageError(f"recurrent.student {path} is a {type(model).__name__}, not a convolutional Hyena student")
    return model.eval().requires_grad_(False)


def _decode_check(student, recurrent, ids, n: int) -> float:
    """Max relative error of logits from prefill + n recurrent steps vs the student's full pass."""
    import torch

    with torch.no_grad():
        P = ids.shape[1] - n
        cache = recurrent.new_cache()
        logits = [recurrent(input_ids=ids[:, :P], past_key_values=cache).logits]
        for t in range(P, ids.shape[1]):
            logits.append(recurrent(input_ids=ids[:, t : t + 1], past_key_values=cache).logits)
        rec = torch.cat(logits, dim=1)
        full = recurrent(input_ids=ids, use_cache=False).logits
    return float((rec - full).norm() / full.norm())


@app.command()
@one_line_errors
def main(params: Path = typer.Option(PARAMS, help="params.yaml with a `recurrent` section")) -> None:
    """Fit every long filter of the student with a modal recurrence; write the recurrent student."""
    import numpy as np
    import torch

    from hyena.data import load_tokens
    from hyena.evaluate.perplexity import stream_perplexity
    from hyena.evaluate.plots import plot_recurrent_fit
    from hyena.evaluate.streams import load_owt_val
    from hyena.io import atomic_dir
    from hyena.recurrence import (
        CalibrationConfig,
        ModalFitConfig,
        layer_output_errors,
        to_recurrent,
    )

    cfg = section(load_params(params), "recurrent", RecurrentParams)
    student = _load_student(cfg.student)
    max_len = student.config.hyena_config().max_len
    if cfg.fit_len > max_len:
        raise StageError(f"recurrent.fit_len {cfg.fit_len} exceeds the student's hyena.max_len {max_len}: lower recurrent.fit_len")
    val = load_owt_val(cfg.tokens)  # 1-D stream
    if len(val) < cfg.context + 1:
        raise StageError(f"{cfg.tokens}/val.npy has {len(val)} tokens, fewer than recurrent.context={cfg.context}")

    fit = ModalFitConfig(order=cfg.order, steps=cfg.steps, lr=cfg.lr, refine_tol=cfg.refine_tol, min_decay=cfg.min_decay)
    calib_ids = None
    if cfg.calib_sequences > 0:
        train = load_tokens(cfg.tokens, "train")
        if len(train) < cfg.calib_sequences:
            raise StageError(f"{cfg.tokens}/train.npy has {len(train)} sequences, fewer than recurrent.calib_sequences={cfg.calib_sequences}")
        rows = np.asarray(train[: cfg.calib_sequences, : cfg.fit_len]).astype(np.int64)
        calib_ids = torch.from_numpy(rows)
    calib = CalibrationConfig(filter_weight=cfg.calib_filter_weight, steps=cfg.calib_steps, lr=cfg.calib_lr)
    t0 = time.time()
    recurrent, reports = to_recurrent(student, fit, fit_len=cfg.fit_len, calib_ids=calib_ids, calib=calib)
    fit_s = time.time() - t0

    n_err = min(cfg.error_sequences, len(val) // cfg.context)
    windows = torch.from_numpy(np.asarray(val[: n_err * cfg.context]).astype(np.int64)).view(n_err, cfg.context)
    for report, err in zip(reports, layer_output_errors(student, recurrent, windows), strict=True):
        report["mixer_output_rel_err"] = err

    ppl = {}
    for name, model in (("student", student), ("recurrent", recurrent)):
        r = stream_perplexity(model, val, context=cfg.context, max_windows=cfg.max_windows or None,
                              batch_size=cfg.batch_size, desc=f"ppl {name}")
        ppl[name] = r.ppl
    n_check = min(cfg.decode_check_tokens, cfg.context - 1)
    decode_err = _decode_check(student, recurrent, windows[:1], n_check) if n_check > 0 else None

    metrics = {
        "order": cfg.order,
        "fit_len": cfg.fit_len,
        "fit_seconds": round(fit_s, 1),
        "calib_sequences": cfg.calib_sequences,
        "calib_steps": cfg.calib_steps,
        "filter_rel_l2_mean": float(np.mean([r["filter_rel_l2_mean"] for r in reports])),
        "filter_rel_l2_max": float(np.max([r["filter_rel_l2_max"] for r in reports])),
        "mixer_output_rel_err_mean": float(np.mean([r["mixer_output_rel_err"] for r in reports])),
        "mixer_output_rel_err_max": float(np.max([r["mixer_output_rel_err"] for r in reports])),
        "ppl_owt_student": ppl["student"],
        "ppl_owt_recurrent": ppl["recurrent"],
        "ppl_rel_diff": ppl["recurrent"] / ppl["student"] - 1.0,
        "ppl_context": cfg.context,
        "ppl_windows": cfg.max_windows,
        "decode_check_rel_err": decode_err,
        "state_bytes_per_sequence": sum(recurrent.mixer(i).state_bytes() for i in range(len(reports))),
        "layers": reports,
    }
    with atomic_dir(cfg.out) as tmp:
        recurrent.save_pretrained(tmp)
        for name in TOKENIZER_FILES:
            if (Path(cfg.student) / name).is_file():
                shutil.copy2(Path(cfg.student) / name, tmp / name)
    write_metrics(cfg.metrics, metrics)
    plot_recurrent_fit(metrics, cfg.plot)
    typer.echo(f"recurrent student -> {cfg.out}: filter rel L2 {metrics['filter_rel_l2_mean']:.2e}, "
               f"mixer output rel err {metrics['mixer_output_rel_err_mean']:.2e} (held out), "
               f"OWT ppl {ppl['student']:.2f} (conv) vs {ppl['recurrent']:.2f} (recurrent, "
               f"{100 * metrics['ppl_rel_diff']:+.2f}%)")


if __name__ == "__main__":
    app()
