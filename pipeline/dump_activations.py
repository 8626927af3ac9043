"""Stage `dump-activations`: teacher layer outputs on the token budget -> data/activations.zarr.

Resumable: rerunning after a crash (even kill -9) continues from the chunks already written; in
dvc.yaml the store is declared `persist: true` so that DVC does not delete it before the rerun.
"""

from __future__ import annotations

from pathlib import Path

import typer

from hyena.store import DumpParams, dump_activations
from pipeline.common import (
    PARAMS,
    StageError,
    TeacherParams,
    load_params,
    load_teacher_from,
    one_line_errors,
    section,
)

app = typer.Typer(add_completion=False)


def pick_device(name: str):
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise StageError("dump.device is 'cuda' but no CUDA device is available: set it to auto or cpu")
    return torch.device(name)


@app.command()
@one_line_errors
def main(
    params: Path = typer.Option(PARAMS, help="params.yaml with `teacher` and `dump` sections"),
    tokens: Path = typer.Option(Path("data/tokens"), help="token directory written by the tokenize stage"),
    out: Path = typer.Option(Path("data/activations.zarr"), help="activation store (resumed if interrupted)"),
) -> None:
    """Run the teacher over the token budget and store every layer's output in a Zarr store."""
    all_params = load_params(params)
    cfg = section(all_params, "dump", DumpParams)
    cfg.validate()
    teacher_cfg = section(all_params, "teacher", TeacherParams)
    if not (tokens / "manifest.json").is_file():
        raise StageError(f"token manifest not found: {tokens}/manifest.json (run the tokenize stage first)")
    model = load_teacher_from(all_params).to(pick_device(cfg.device))
    store = dump_activations(model, tokens, out, cfg, teacher_cfg.source)
    for split in store.splits:
        typer.echo(f"{split}: {store.n_sequences(split)} x {store.seq_len} tokens, {store.n_layers + 1} arrays")
    typer.echo(f"wrote {out} (complete)")


if __name__ == "__main__":
    app()
