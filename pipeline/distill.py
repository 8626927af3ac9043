"""Stage `distill@XX`: distil decoder layer XX of the student by MSE to the teacher's layer XX
(`hyena.train.distill`), on the frozen student's own output of layer XX-1 (`distill.input: student`,
progressive, the paper) or the teacher's (`teacher`). Writes `paths.students/layer_XX/` atomically:
the layer's weights, the hash chain of every layer so far and, progressive, its outputs (`acts.zarr`).
"""

from __future__ import annotations

from pathlib import Path

import typer

from hyena.core.dist import setup, teardown
from hyena.core.io import atomic_dir, claim_output, reading_weights
from hyena.data.store import ActivationStore, layer_pairs
from hyena.model.modeling import HyenaStudentForCausalLM
from hyena.train import distill
from pipeline.params import (
    PARAMS_OPTION,
    Params,
    command,
    dvclive_logger,
    read_chain,
    split_timings,
    stage_app,
    write_metrics,
)

app = stage_app()


@command(app)
def main(
    layer: str = typer.Option(..., help="layer key in params distill.layers, e.g. 03 (1-based)"),
    params_file: Path = PARAMS_OPTION,
) -> None:
    params = Params.read(params_file)
    d, p = params.get("distill", distill.DistillConfig), params.paths
    cfg = d.for_layer(layer)
    idx, prev = int(layer), d.prev(layer)
    env = setup(precision=cfg.precision)
    if env.is_main:
        claim_output(p.layer(layer), "distill")
    teacher_acts = ActivationStore.open(p.activations)
    distill.check_layer_fits(teacher_acts, layer, cfg)
    chain = read_chain(p, prev)
    with reading_weights(p.layer("00"), "rerun the init-student stage"):
        student = HyenaStudentForCausalLM.from_pretrained(p.layer("00")).to(env.device)
    student.requires_grad_(False)
    progressive = cfg.input == "student" and prev != "00"  # layer 1's input (the embeddings) is shared
    train, val = layer_pairs(teacher_acts, idx, int(prev), p.layer(prev) / distill.STUDENT_OUTPUTS if progressive else None,
                             progress_bar=env.is_main)
    # every layer's stage writes its DVCLive dir (a dvc.yaml output): curves when it takes steps,
    # and always a summary (below)
    log = dvclive_logger(p.dvclive(f"distill_{layer}")) if env.is_main else None
    result = distill.distill_one_layer(student, idx - 1, cfg, env, train, val, params.teacher_dir(), log)
    if env.is_main:
        with atomic_dir(p.layer(layer), "distill") as tmp:
            distill.save_layer(student, idx - 1, tmp, chain, layer, (train[0], val[0]) if cfg.input == "student" else None,
                       env, cfg.batch_size, attrs={"layer": idx, "input": cfg.input})
        metrics, timing = split_timings({"layer": idx, "input": cfg.input, "target": cfg.target, **result})
        # never an empty directory (epochs 0, a kept layer): git does not keep one, so a fresh clone
        # or a queued experiment would find this output missing and rerun every distill stage
        log.live.summary.update({k: v for k, v in metrics.items() if isinstance(v, (int, float))})
        log.live.make_summary()
        write_metrics(p.metrics(f"distill/layer_{layer}"), metrics)
        write_metrics(p.timing(f"distill_{layer}"), timing)
        what = "kept the teacher's attention" if result.get("kept_attention") else f"{result['steps']} steps"
        typer.echo(f"layer {layer} ({cfg.target}): val MSE {result['val_mse_before']:.4g} -> {result['val_mse']:.4g}, "
                   f"layer output val MSE {result['val_layer_mse_before']:.4g} -> {result['val_layer_mse']:.4g}, {what}")
    env.barrier()
    teardown(env)


if __name__ == "__main__":
    app()
