"""Stage `distill@XX`: distil decoder layer XX of the student by MSE to the teacher's layer XX.

Inputs of layer XX: the frozen student's own output of layer XX-1 (`distill.input: student`,
progressive, as the paper; for layer 1 that is the teacher's embedding output, which the student
shares) or the teacher's (`teacher`, teacher-forced). Writes one directory, atomically:
`paths.students/layer_XX/` with the trained layer's weights, the hash chain of every layer so far
and, in progressive mode, the student's output of layer XX (`acts.zarr`, the next stage's input).
"""

from __future__ import annotations

import json
from pathlib import Path

import typer

from pipeline.params import (
    PARAMS_OPTION,
    Params,
    StageError,
    command,
    dvclive_logger,
    split_timings,
    stage_app,
    write_metrics,
)

app = stage_app()

ACTS = "acts.zarr"  # the student's output of this layer, inside the layer directory


@command(app)
def main(
    layer: str = typer.Option(..., help="layer key in params distill.layers, e.g. 03 (1-based)"),
    params_file: Path = PARAMS_OPTION,
) -> None:
    from safetensors.torch import save_file

    from hyena.io import atomic_dir, claim_output, file_sha256, reading_weights
    from hyena.store import REDUMP, ActivationStore, check_chunks
    from hyena.student import HyenaStudentForCausalLM
    from hyena.train.acts import open_outputs, write_outputs
    from hyena.train.dist import setup, teardown
    from hyena.train.distill import DistillConfig, distill_layer, layer_outputs

    params = Params.read(params_file)
    d, p = params.get("distill", DistillConfig), params.paths
    cfg = d.for_layer(layer)
    idx, prev = int(layer), d.prev(layer)
    env = setup()
    if env.is_main:
        claim_output(p.layer(layer), "distill")
    teacher_acts = ActivationStore.open(p.activations)
    if not 1 <= idx <= teacher_acts.n_layers:
        raise StageError(f"layer {layer} is outside the teacher's 1..{teacher_acts.n_layers} layers")
    if cfg.batch_size > teacher_acts.n_sequences("train"):
        raise StageError(f"distill.batch_size {cfg.batch_size} (layer {layer}) exceeds the "
                         f"{teacher_acts.n_sequences('train')} dumped training sequences: lower it or raise dump.train_sequences")
    chain = json.loads((p.layer(prev) / "chain.json").read_text())
    with reading_weights(p.layer("00"), "rerun the init-student stage"):
        student = HyenaStudentForCausalLM.from_pretrained(p.layer("00"))
    student.requires_grad_(False)
    block, mixer = student.decoder_layers()[idx - 1], student.mixer(idx - 1)
    if cfg.input == "student" and prev != "00":
        inputs = open_outputs(p.layer(prev) / ACTS)
        train_in, val_in = inputs["train"], inputs["val"]
        fix_in = f"rerun distill@{prev}"
    else:  # teacher-forced, or layer 1, whose input (the embedding output) the student shares
        train_in, val_in = teacher_acts.layer("train", int(prev)), teacher_acts.layer("val", int(prev))
        fix_in = REDUMP
    train_out, val_out = teacher_acts.layer("train", idx), teacher_acts.layer("val", idx)
    # a damaged input is named as such here, instead of surfacing later as a diverged loss
    for arr, fix in ((train_in, fix_in), (val_in, fix_in), (train_out, REDUMP), (val_out, REDUMP)):
        check_chunks(arr, arr.path, fix, progress_bar=env.is_main)

    log = dvclive_logger(p.dvclive(f"distill_{layer}")) if env.is_main else None
    result = distill_layer(block, mixer, train_in, train_out, val_in, val_out, cfg, env, log=log)
    if env.is_main:
        with atomic_dir(p.layer(layer), "distill") as tmp:
            weights = tmp / "layer.safetensors"
            save_file({k: v.detach().cpu().contiguous() for k, v in block.state_dict().items()}, str(weights))
            # every earlier layer's hash: this output changes whenever any of them does
            write_metrics(tmp / "chain.json", {**chain, layer: file_sha256(weights)})
            if cfg.input == "student":
                def fill(split, arr):
                    src = train_in if split == "train" else val_in
                    layer_outputs(block, src, env, cfg.batch_size,
                                  lambda start, out: arr.__setitem__(slice(start, start + len(out)), out))

                shapes = {"train": tuple(train_in.shape), "val": tuple(val_in.shape)}
                write_outputs(tmp / ACTS, shapes, fill, attrs={"layer": idx, "input": cfg.input})
        metrics, timing = split_timings({"layer": idx, "input": cfg.input, **result})
        write_metrics(p.metrics(f"distill/layer_{layer}"), metrics)
        write_metrics(p.timing(f"distill_{layer}"), timing)
        typer.echo(f"layer {layer}: val MSE {result['val_mse_before']:.4g} -> {result['val_mse']:.4g} "
                   f"({result['val_mse_before'] / max(result['val_mse'], 1e-30):.1f}x lower), "
                   f"{result['steps']} steps in {result['seconds']:.0f}s")
    env.barrier()
    teardown(env)


if __name__ == "__main__":
    app()
