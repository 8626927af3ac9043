"""Stage `dump-activations`: teacher layer outputs on the token budget -> paths.activations (Zarr).

Resumable: rerunning after a crash (even kill -9) continues from the chunks already written; in
dvc.yaml the store is declared `persist: true` so that DVC does not delete it before the rerun.
Sharded: `torchrun --nproc_per_node=K -m pipeline.dump_activations` runs the teacher on every
rank, each writing its own chunks (gloo on CPU, NCCL on GPUs); the store equals a one-process dump.
"""

from __future__ import annotations

from pathlib import Path

import typer

from hyena.core.dist import setup, teardown
from hyena.core.io import hold_output, reading_weights
from hyena.data.dump import DumpConfig, dump_activations
from hyena.data.resume import check_store_path
from hyena.data.tokens import check_tokenizer, load_manifest
from hyena.teachers import load_teacher, teacher_record
from pipeline.params import PARAMS_OPTION, Params, command, stage_app

app = stage_app()


@command(app)
def main(params_file: Path = PARAMS_OPTION) -> None:
    """Run the teacher over the token budget and store every layer's output in a Zarr store."""
    params = Params.read(params_file)
    cfg, p = params.get("dump", DumpConfig), params.paths
    load_manifest(p.tokens)  # one line if the tokenize stage has not run
    check_store_path(p.activations)  # before the teacher loads
    teacher = params.teacher_dir()
    check_tokenizer(p.tokens, teacher, "the teacher")
    env = setup(device=cfg.device, precision="fp32")  # the cached targets are fp32 forward passes
    if env.is_main:  # one writer per store: a second dump fails here, at once (ranks share rank 0's lock)
        hold_output(p.activations, "dump-activations")
    with reading_weights(teacher, "rerun the teacher stage"):
        model = load_teacher(str(teacher)).to(env.device)
    store = dump_activations(model, p.tokens, p.activations, cfg, teacher_record(teacher).get("source", str(teacher)),
                             rank=env.rank, world_size=env.world_size, barrier=env.barrier)
    teardown(env)
    if not env.is_main:
        return
    for split in store.splits:
        typer.echo(f"{split}: {store.n_sequences(split)} x {store.seq_len} tokens, {store.n_layers + 1} arrays")
    typer.echo(f"wrote {p.activations} (complete)")


if __name__ == "__main__":
    app()
