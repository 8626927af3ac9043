"""Stage `distill@XX`: distil decoder layer XX of the student by MSE to the teacher's layer XX.

Inputs of layer XX: the frozen student's own output of layer XX-1 (`distill.input: student`,
progressive, as the paper; for layer 1 that is the teacher's embedding output, which the student
shares) or the teacher's (`teacher`, teacher-forced). Writes one directory, atomically:
`paths.students/layer_XX/` with the trained layer's weights, the hash chain of every layer so far
and, in progressive mode, the student's output of layer XX (`acts.zarr`, the next stage's input).
"""

from __future__ import annotations

from pathlib import Path

import typer

from pipeline.params import (
    PARAMS_OPTION,
    Params,
    StageError,
    command,
    dvclive_logger,
    read_chain,
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

    from hyena.core.dist import setup, teardown
    from hyena.core.io import atomic_dir, claim_output, file_sha256, reading_weights
    from hyena.data.store import REDUMP, ActivationStore, check_chunks, open_outputs, write_outputs
    from hyena.model.modeling import HyenaStudentForCausalLM
    from hyena.train.distill import DistillConfig, layer_outputs

    params = Params.read(params_file)
    d, p = params.get("distill", DistillConfig), params.paths
    cfg = d.for_layer(layer)
    idx, prev = int(layer), d.prev(layer)
    env = setup(precision=cfg.precision)
    if env.is_main:
        claim_output(p.layer(layer), "distill")
    teacher_acts = ActivationStore.open(p.activations)
    if not 1 <= idx <= teacher_acts.n_layers:
        raise StageError(f"layer {layer} is outside the teacher's 1..{teacher_acts.n_layers} layers")
    if cfg.batch_size > teacher_acts.n_sequences("train"):
        raise StageError(f"distill.batch_size {cfg.batch_size} (layer {layer}) exceeds the "
                         f"{teacher_acts.n_sequences('train')} dumped training sequences: lower it or raise dump.train_sequences")
    chain = read_chain(p, prev)
    with reading_weights(p.layer("00"), "rerun the init-student stage"):
        student = HyenaStudentForCausalLM.from_pretrained(p.layer("00")).to(env.device)
    student.requires_grad_(False)
    if cfg.input == "student" and prev != "00":
        inputs = open_outputs(p.layer(prev) / ACTS)
        train_in, val_in = inputs["train"], inputs["val"]
        fix_in, digests_in = f"rerun distill@{prev}", {}
    else:  # teacher-forced, or layer 1, whose input (the embedding output) the student shares
        train_in, val_in = teacher_acts.layer("train", int(prev)), teacher_acts.layer("val", int(prev))
        fix_in, digests_in = REDUMP, {s: teacher_acts.digests(s, int(prev)) for s in ("train", "val")}
    train_out, val_out = teacher_acts.layer("train", idx), teacher_acts.layer("val", idx)
    # a damaged input is named as such here (digests, decoding, finite values), instead of
    # surfacing later as a diverged loss or, worse, as a plausible one
    for arr, fix, digests in ((train_in, fix_in, digests_in.get("train")), (val_in, fix_in, digests_in.get("val")),
                              (train_out, REDUMP, teacher_acts.digests("train", idx)),
                              (val_out, REDUMP, teacher_acts.digests("val", idx))):
        check_chunks(arr, arr.path, fix, progress_bar=env.is_main, digests=digests)

    # every layer's stage writes its DVCLive dir (a dvc.yaml output): curves when it takes steps,
    # and always a summary (below)
    log = dvclive_logger(p.dvclive(f"distill_{layer}")) if env.is_main else None
    if student.config.is_hyena(idx - 1):
        result = _distill(student, idx - 1, cfg, env, params, (train_in, train_out), (val_in, val_out), log)
    else:
        result = _kept(student, idx - 1, val_in, val_out, env)
    block = student.decoder_layers()[idx - 1]
    if env.is_main:
        with atomic_dir(p.layer(layer), "distill") as tmp:
            weights = tmp / "layer.safetensors"
            save_file({k: v.detach().cpu().contiguous() for k, v in block.state_dict().items()}, str(weights))
            # every earlier layer's hash: this output changes whenever any of them does
            write_metrics(tmp / "chain.json", {**chain, layer: file_sha256(weights)})
            if cfg.input == "student":
                def fill(split, arr):
                    src = train_in if split == "train" else val_in
                    layer_outputs(lambda x: student.run_layer(idx - 1, x), src, env, cfg.batch_size,
                                  lambda start, out: arr.__setitem__(slice(start, start + len(out)), out))

                shapes = {"train": tuple(train_in.shape), "val": tuple(val_in.shape)}
                write_outputs(tmp / ACTS, shapes, fill, attrs={"layer": idx, "input": cfg.input})
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


def _distill(student, i: int, cfg, env, params, train, val, log) -> dict:
    """Train layer i's mixer (or whole layer) on its target; adds the layer-output MSE before and
    after, whatever the target, so that every recipe reports one comparable number per layer."""
    from hyena.teachers import attention_output, load_teacher
    from hyena.train.batches import VAL_BATCH, load_all
    from hyena.train.distill import (
        RAM_BYTES,
        ComputedTargets,
        LayerOnly,
        distill_layer,
        fit_readout,
        layer_mse,
        readout_norm,
        trainable_fn,
    )

    block, mixer = student.decoder_layers()[i], student.mixer(i)
    fn = trainable_fn(block, mixer, student.adapter.input_norm(block), cfg)
    (train_in, train_out), (val_in, val_out) = train, val
    if cfg.target == "layer_output":
        result = distill_layer(fn, train_in, train_out, val_in, val_out, cfg, env, log=log)
        return {**result, "val_layer_mse_before": result["val_mse_before"], "val_layer_mse": result["val_mse"],
                "val_layer_nmse_before": result["val_nmse_before"], "val_layer_nmse": result["val_nmse"],
                "readout_norm": readout_norm(mixer)}
    teacher = load_teacher(str(params.teacher_dir())).to(env.device)

    def target(x):
        return attention_output(teacher, i, x)

    whole = LayerOnly(block)
    before = layer_mse(whole, val_in, val_out, env, VAL_BATCH)
    train_t = load_all(ComputedTargets(train_in, target, env.device), RAM_BYTES // 2)
    val_t = ComputedTargets(val_in, target, env.device)
    readout = None
    if cfg.readout == "least_squares":
        mixer.out_proj.requires_grad_(False)  # the solve owns the readout; the steps shape the features

        def readout():
            fit_readout(mixer, fn.norm, train_in, train_t, cfg, env)
    result = distill_layer(fn, train_in, train_t, val_in, val_t, cfg, env, log=log, readout=readout)
    after = layer_mse(whole, val_in, val_out, env, VAL_BATCH)
    return {**result, "val_layer_mse_before": before["mse"], "val_layer_mse": after["mse"],
            "val_layer_nmse_before": before["nmse"], "val_layer_nmse": after["nmse"],
            "readout_norm": readout_norm(mixer)}


def _kept(student, i: int, val_in, val_out, env) -> dict:
    """A layer the hybrid keeps: no training; its layer-output MSE on the stage's inputs is recorded
    (zero when teacher-forced: it is the teacher's layer)."""
    from hyena.train.batches import VAL_BATCH
    from hyena.train.distill import layer_mse

    m = layer_mse(lambda x: student.run_layer(i, x), val_in, val_out, env, VAL_BATCH)
    return {"kept_attention": True, "steps": 0, "train_tokens": 0, "seconds": 0.0,
            "val_mse_before": m["mse"], "val_mse": m["mse"], "val_nmse_before": m["nmse"], "val_nmse": m["nmse"],
            "val_mse_after_first_before": m["mse_after_first"], "val_mse_after_first": m["mse_after_first"],
            "val_layer_mse_before": m["mse"], "val_layer_mse": m["mse"],
            "val_layer_nmse_before": m["nmse"], "val_layer_nmse": m["nmse"]}


if __name__ == "__main__":
    app()
