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

from hyena.core.io import atomic_dir, claim_output
from hyena.data.tokens import check_tokenizer
from hyena.evaluate.plots import plot_recurrent_fit
from hyena.evaluate.streams import load_owt_val
from hyena.model.cards import ModelCard
from hyena.recurrence import RecurrentConfig, to_recurrent
from hyena.recurrence.checks import calibration_ids, faithfulness, load_conv_student
from hyena.teachers import copy_tokenizer
from pipeline.params import PARAMS_OPTION, Params, StageError, command, stage_app, write_metrics

app = stage_app()


@command(app)
def main(params_file: Path = PARAMS_OPTION) -> None:
    """Fit every long filter of the student with a modal recurrence; write the recurrent student."""
    params = Params.read(params_file)
    cfg, p = params.get("recurrent", RecurrentConfig), params.paths
    if cfg.fit_len < cfg.context:
        raise StageError(f"recurrent.fit_len {cfg.fit_len} is shorter than recurrent.context {cfg.context}: the check "
                         "would run the modal filters beyond the taps they are fitted on; raise recurrent.fit_len")
    src, out = p.student("finetuned"), claim_output(p.student("recurrent"), "distill-recurrent")
    student = load_conv_student(src)
    check_tokenizer(p.tokens, src, "the student")
    max_len = student.config.hyena_config().max_len
    if cfg.fit_len > max_len:
        raise StageError(f"recurrent.fit_len {cfg.fit_len} exceeds the student's hyena.max_len {max_len}: lower recurrent.fit_len")
    val = load_owt_val(p.tokens)  # 1-D stream
    if len(val) < cfg.context + 1:
        raise StageError(f"{p.tokens}/val.npy has {len(val)} tokens, fewer than recurrent.context={cfg.context}")
    calib_ids = calibration_ids(cfg, p.tokens)

    t0 = time.time()
    recurrent, reports = to_recurrent(student, cfg, calib_ids=calib_ids)
    fit_s = time.time() - t0
    metrics = {"order": cfg.fit.order, "fit_len": cfg.fit_len, "calib_sequences": cfg.calib.sequences,
               "calib_steps": cfg.calib.steps, **faithfulness(student, recurrent, reports, val, cfg),
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
