"""The student's own layer outputs, cached per distillation stage.

Progressive distillation feeds layer i with the frozen student's output of layer i-1. Each
progressive `distill@i` stage runs its trained layer once over every train/val sequence and
stores the result next to the layer's weights, so stage i+1 reads its inputs instead of re-running
layers 1..i every step. Layout: a Zarr v3 group with arrays `train` and `val`, (n, L, d) float16,
chunked along sequences; the attribute `complete` is written last.
"""

from __future__ import annotations

from pathlib import Path

import zarr


def open_outputs(path: str | Path) -> zarr.Group:
    """Open a finished outputs group, refusing an incomplete one."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"student layer outputs not found: {path} (rerun the previous distill stage "
                                f"with distill.input: student)")
    group = zarr.open_group(str(path), mode="r")
    if not group.attrs.get("complete"):
        raise RuntimeError(f"{path} is incomplete (its stage was interrupted): rerun that stage")
    return group


def write_outputs(path: str | Path, shapes: dict[str, tuple[int, int, int]], fill, chunk_rows: int = 16,
                  attrs: dict | None = None) -> None:
    """Create arrays `shapes` (name -> (n, L, d)) at `path` (inside the caller's atomic output
    directory) and call `fill(name, array)` for each; `complete` is written last."""
    group = zarr.open_group(str(path), mode="w")
    for name, shape in shapes.items():
        arr = group.create_array(name, shape=shape, dtype="float16",
                                 chunks=(min(chunk_rows, max(shape[0], 1)), shape[1], shape[2]),
                                 compressors=None)
        fill(name, arr)
    group.attrs.update({**(attrs or {}), "complete": True})
