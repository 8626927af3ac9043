"""`distill-recurrent` stage: Laughing Hyena distillation of the fine-tuned student.

Every long filter of the fine-tuned student is fitted with `recurrent.fit.order` complex modes over
`recurrent.fit_len` taps, then (with `recurrent.calib.sequences` > 0) calibrated on the student's
own activations for that many training windows: residues re-solved for each mixer's output error
and optionally `recurrent.calib.steps` Adam steps on it (hyena/recurrence/calibrate.py). The
recurrent student (HF dir, model_type "hyena_recurrent_student") goes to paths.students/recurrent;
its metrics get per-layer fit quality (relative L2 error of the filters and of each mixer's output
on real validation activations), the perplexity of both students on the same OpenWebText
validation windows, and a decode check (prefill + recurrent steps vs the stateless forward pass);
the plot draws the per-layer errors.

    python -m pipeline.distill_recurrent [--params params.yaml]
"""

from __future__ import annotations

import time
from pathlib import Path

import typer

from pipeline.params import PARAMS_OPTION, Params, StageError, command, stage_app, write_metrics

app = stage_app()


def _load_student(path: Path):
    import torch
    from transformers import AutoModelForCausalLM

    import hyena.recurrence  # noqa: F401  (registers the student classes)
    from hyena.core.io import reading_weights
    from hyena.model.modeling import HyenaStudentForCausalLM

    p = Path(path)
    if not (p / "config.json").is_file():
        raise StageError(f"{path} is not an HF model directory (no config.json): run the finetune stage")
    with reading_weights(p, "rerun the finetune stage"):
        model = AutoModelForCausalLM.from_pretrained(str(p), dtype=torch.float32)
    if type(model) is not HyenaStudentForCausalLM:
        raise StageError(f"{path} is a {type(model).__name__}, not a convolutional Hyena student")
    return model.eval().requires_grad_(False)


def _decode_check(student, recurrent, ids, n: int) -> float:
    """Max relative error of logits from prefill + n recurrent steps vs the student's full pass."""
    import torch

    with torch.no_grad():
        P = ids.shape[1] - n
        cache = recurrent.new_cache()
        logits = [recurrent(input_ids=ids[:, :P], cache=cache).logits]
        for t in range(P, ids.shape[1]):
            logits.append(recurrent(input_ids=ids[:, t : t + 1], cache=cache).logits)
        rec = torch.cat(logits, dim=1)
        full = recurrent(input_ids=ids, use_cache=False).logits
    return float((rec - full).norm() / full.norm())


def _calibration_ids(cfg, tokens: str):
    """The first `calib.sequences` training rows (cut to fit_len) as (B, T) ids, or None."""
    import numpy as np
    import torch

    from hyena.data.corpus import load_tokens

    if cfg.calib.sequences == 0:
        return None
    train = load_tokens(tokens, "train")
    if len(train) < cfg.calib.sequences:
        raise StageError(f"{tokens}/train.npy has {len(train)} sequences, fewer than recurrent.calib.sequences={cfg.calib.sequences}")
    return torch.from_numpy(np.asarray(train[: cfg.calib.sequences, : cfg.fit_len]).astype(np.int64))


def _check(student, recurrent, reports: list[dict], val, cfg) -> dict:
    """How faithful the recurrent student is: each mixer's output error on held-out windows (into
    `reports`), both students' perplexity on the same windows, and prefill + steps vs full pass."""
    import numpy as np
    import torch

    from hyena.evaluate.perplexity import stream_perplexity
    from hyena.recurrence import layer_output_errors

    n_err = min(cfg.error_sequences, len(val) // cfg.context)
    windows = torch.from_numpy(np.asarray(val[: n_err * cfg.context]).astype(np.int64)).view(n_err, cfg.context)
    for report, err in zip(reports, layer_output_errors(student, recurrent, windows), strict=True):
        report["mixer_output_rel_err"] = err
    ppl = {name: stream_perplexity(model, val, context=cfg.context, max_windows=cfg.max_windows or None,
                                   batch_size=cfg.batch_size, desc=f"ppl {name}").ppl
           for name, model in (("student", student), ("recurrent", recurrent))}
    n_check = min(cfg.decode_check_tokens, cfg.context - 1)
    return {
        "filter_rel_l2_mean": float(np.mean([r["filter_rel_l2_mean"] for r in reports])),
        "filter_rel_l2_max": float(np.max([r["filter_rel_l2_max"] for r in reports])),
        "mixer_output_rel_err_mean": float(np.mean([r["mixer_output_rel_err"] for r in reports])),
        "mixer_output_rel_err_max": float(np.max([r["mixer_output_rel_err"] for r in reports])),
        "ppl_owt_student": ppl["student"],
        "ppl_owt_recurrent": ppl["recurrent"],
        "ppl_rel_diff": ppl["recurrent"] / ppl["student"] - 1.0,
        "ppl_context": cfg.context,
        "ppl_windows": cfg.max_windows,
        "decode_check_rel_err": _decode_check(student, recurrent, windows[:1], n_check) if n_check > 0 else None,
    }


@command(app)
def main(params_file: Path = PARAMS_OPTION) -> None:
    """Fit every long filter of the student with a modal recurrence; write the recurrent student."""
    from hyena.core.io import atomic_dir, claim_output
    from hyena.data.corpus import check_tokenizer
    from hyena.evaluate.plots import plot_recurrent_fit
    from hyena.evaluate.streams import load_owt_val
    from hyena.model.cards import ModelCard
    from hyena.recurrence import RecurrentConfig, to_recurrent
    from hyena.teachers import copy_tokenizer

    params = Params.read(params_file)
    cfg, p = params.get("recurrent", RecurrentConfig), params.paths
    if cfg.fit_len < cfg.context:
        raise StageError(f"recurrent.fit_len {cfg.fit_len} is shorter than recurrent.context {cfg.context}: the check "
                         "would run the modal filters beyond the taps they are fitted on; raise recurrent.fit_len")
    src, out = p.student("finetuned"), claim_output(p.student("recurrent"), "distill-recurrent")
    student = _load_student(src)
    check_tokenizer(p.tokens, src, "the student")
    max_len = student.config.hyena_config().max_len
    if cfg.fit_len > max_len:
        raise StageError(f"recurrent.fit_len {cfg.fit_len} exceeds the student's hyena.max_len {max_len}: lower recurrent.fit_len")
    val = load_owt_val(p.tokens)  # 1-D stream
    if len(val) < cfg.context + 1:
        raise StageError(f"{p.tokens}/val.npy has {len(val)} tokens, fewer than recurrent.context={cfg.context}")
    calib_ids = _calibration_ids(cfg, p.tokens)

    t0 = time.time()
    recurrent, reports = to_recurrent(student, cfg, calib_ids=calib_ids)
    fit_s = time.time() - t0
    metrics = {"order": cfg.fit.order, "fit_len": cfg.fit_len, "calib_sequences": cfg.calib.sequences,
               "calib_steps": cfg.calib.steps, **_check(student, recurrent, reports, val, cfg),
               "state_bytes_per_sequence": sum(recurrent.mixer(i).state_bytes() for i in recurrent.hyena_layers()),
               "kept_attention": list(student.config.keep_attention),
               "layers": reports}
    card = ModelCard.of(src, student).derive("recurrent", params.recipe("recurrent"), metrics={
        k: metrics[k] for k in ("filter_rel_l2_mean", "mixer_output_rel_err_mean", "ppl_owt_student",
                                "ppl_owt_recurrent", "ppl_rel_diff", "decode_check_rel_err") if metrics.get(k) is not None})
    with atomic_dir(out, "distill-recurrent") as tmp:
        recurrent.save_pretrained(tmp)
        copy_tokenizer(src, tmp)
        card.write(tmp, recurrent, str(out))
    write_metrics(p.metrics("recurrent"), metrics)
    write_metrics(p.timing("distill-recurrent"), {"fit_seconds": round(fit_s, 1)})
    plot_recurrent_fit(metrics, p.plot("recurrent_fit"))
    typer.echo(f"recurrent student -> {out}: filter rel L2 {metrics['filter_rel_l2_mean']:.2e}, "
               f"mixer output rel err {metrics['mixer_output_rel_err_mean']:.2e} (held out), "
               f"OWT ppl {metrics['ppl_owt_student']:.2f} (conv) vs {metrics['ppl_owt_recurrent']:.2f} (recurrent, "
               f"{100 * metrics['ppl_rel_diff']:+.2f}%)")


if __name__ == "__main__":
    app()
