"""Command `inspect`: what is in an activation store, how it is stored, and whether it is intact."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import typer
from rich.console import Console
from rich.table import Table

from hyena.data.store import (
    ActivationStore,
    disk_bytes,
    layer_name,
    layer_stats,
    parse_slice,
    verify_store,
)
from pipeline.params import PARAMS, StageError, load_params, one_line_errors, paths

app = typer.Typer(add_completion=False)


def _gb(n: float) -> str:
    return f"{n / 1e6:,.1f} MB" if n < 1e9 else f"{n / 1e9:,.2f} GB"


def provenance_table(store: ActivationStore) -> Table:
    a = store.attrs
    t = Table(title=f"{store.path}  ({'complete' if store.complete else 'INCOMPLETE'})", show_header=False)
    t.add_column("field", style="bold")
    t.add_column("value")
    teacher = a.get("teacher", {})
    t.add_row("teacher", f"{teacher.get('source')} ({teacher.get('family')}, weights {teacher.get('weights_hash')})")
    t.add_row("tokens", f"{a['tokens']['dir']} (manifest {a['tokens']['manifest_hash'][:16]})")
    t.add_row("layout", f"{store.n_layers + 1} arrays per split x (sequences, {store.seq_len}, {store.d_model}) {a['dtype']}")
    t.add_row("layers", a.get("layers", ""))
    t.add_row("params", json.dumps(a.get("params", {}), sort_keys=True))
    for split in store.splits:
        t.add_row(split, f"{store.n_sequences(split)} sequences, {store.chunks_done(split)}/{store.n_chunks(split)} chunks written")
    return t


def _dims(shape) -> str:
    return "x".join(str(n) for n in shape)


def arrays_table(store: ActivationStore) -> Table:
    """One row per array; `raw` counts the uncompressed bytes of the chunks written so far."""
    t = Table(title=f"arrays ({store.attrs['dtype']})")
    t.add_column("array", no_wrap=True)
    for col in ("shape", "chunks", "codec", "on disk", "raw", "ratio"):
        t.add_column(col, justify="right", no_wrap=True)
    for split in store.splits:
        for k in range(store.n_layers + 1):
            arr = store.layer(split, k)
            codecs = ", ".join(type(c).__name__.removesuffix("Codec") for c in arr.compressors) or "none"
            disk = disk_bytes(store.path / split / layer_name(k) / "c")
            written = sum(1 for i in range(store.n_chunks(split)) if store.chunk_file(split, k, i).is_file())
            raw = written * int(np.prod(arr.chunks)) * arr.dtype.itemsize
            ratio = f"{raw / disk:.3f}" if disk else "-"
            t.add_row(f"{split}/{layer_name(k)}", _dims(arr.shape), _dims(arr.chunks), codecs, _gb(disk), _gb(raw), ratio)
    return t


def stats_table(store: ActivationStore, split: str, sample: int) -> Table:
    t = Table(title=f"per-layer statistics over the first {min(sample, store.n_sequences(split))} {split} sequences")
    for col in ("layer", "mean", "std", "max |x|", "non-finite"):
        t.add_column(col, justify="right")
    for k in range(store.n_layers + 1):
        try:
            s = layer_stats(store.layer(split, k), sample)
        except Exception as err:  # noqa: BLE001 - a damaged chunk: say so here, --verify names it
            t.add_row(layer_name(k), f"[red]unreadable ({type(err).__name__})[/red]", "", "", "")
            continue
        t.add_row(layer_name(k), f"{s['mean']:+.4f}", f"{s['std']:.4f}", f"{s['max_abs']:.3f}", f"{s['non_finite']:.2%}")
    return t


@app.command()
@one_line_errors
def main(
    path: Path = typer.Argument(None, help="activation store directory (default: paths.activations)"),
    split: str = typer.Option("train", help="split for statistics and --slice"),
    sample: int = typer.Option(8, min=1, help="sequences per layer used for the statistics"),
    slice_: str | None = typer.Option(None, "--slice", help="print one slice: LAYER,SEQ,START:STOP (e.g. 3,0,0:8)"),
    verify: bool = typer.Option(False, "--verify", help="read every chunk: present, readable, finite; exit 1 if not"),
    stats: bool = typer.Option(True, "--stats/--no-stats", help="print per-layer statistics"),
    params: Path = typer.Option(PARAMS, help="params.yaml (paths.activations, when PATH is not given)"),
) -> None:
    """Print an activation store's provenance, arrays, size, statistics; optionally a slice or a full verify."""
    console = Console()
    path = path or Path(paths(load_params(params)).activations)
    store = ActivationStore.open(path, allow_incomplete=True)
    if split not in store.splits:
        raise StageError(f"--split {split!r} not in {path}; has {', '.join(store.splits)}")
    console.print(provenance_table(store))
    console.print(arrays_table(store))
    total = disk_bytes(path)
    console.print(f"total on disk: {_gb(total)}")
    if stats and store.n_sequences(split):
        console.print(stats_table(store, split, sample))
    if slice_:
        layer, seq, start, stop = parse_slice(slice_)
        if not 0 <= seq < store.n_sequences(split):
            raise StageError(f"--slice sequence {seq} out of range 0..{store.n_sequences(split) - 1} of {split}")
        stop = store.seq_len if stop < 0 else stop
        x = store.layer(split, layer)[seq, start:stop]  # (positions, d)
        console.print(f"{split}/{layer_name(layer)}[{seq}, {start}:{stop}] shape {tuple(x.shape)} {x.dtype}")
        with np.printoptions(precision=4, suppress=True, linewidth=120, edgeitems=4, threshold=200):
            console.print(str(x), markup=False, highlight=False)
    if verify:
        problems = verify_store(store)
        if problems:
            for problem in problems[:20]:
                console.print(f"[red]{problem}[/red]")
            more = f" (+{len(problems) - 1} more above)" if len(problems) > 1 else ""
            raise StageError(f"verify failed: {problems[0]}{more}")
        console.print("[green]verify: every chunk present, readable and finite[/green]")


if __name__ == "__main__":
    app()
