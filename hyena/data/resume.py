"""A dump's output directory across runs: refusing to replace what a dump did not write, keeping a
store made with the same fingerprint (and marking its damaged chunks to be written again), and
finishing it (`complete` written last)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import zarr
from tqdm.auto import tqdm

from hyena.core.io import (
    MARKER,
    OutputConflictError,
    output_owner,
    remove_leftovers,
)
from hyena.data.store import (
    FORMAT,
    PROGRESS,
    STAGE,
    ActivationStore,
)
from hyena.data.tokens import SPLITS


def _is_store_output(out: Path) -> bool:
    """Whether `out` is a directory a dump wrote: its marker, or (stores made before markers
    existed) a root zarr.json of this store format."""
    if output_owner(out) == STAGE:
        return True
    try:
        return json.loads((out / "zarr.json").read_text())["attributes"]["format"] == FORMAT
    except (OSError, ValueError, KeyError, TypeError):
        return False


def _remove_partial_files(out: Path) -> None:
    """zarr writes each file as `NAME.<uuid>.partial` and renames it: a killed write leaves one."""
    for f in out.rglob("*.partial"):
        f.unlink(missing_ok=True)


def check_store_path(out: str | Path) -> None:
    """Refuse (one line) an `out` that exists and is not a store a dump wrote (or an empty dir)."""
    out = Path(out)
    if not out.exists() and not out.is_symlink():
        return
    if out.is_symlink():
        raise OutputConflictError(f"refusing to write through the symbolic link {out}: set paths.activations "
                                  "to the real directory")
    if not out.is_dir() or (any(out.iterdir()) and not _is_store_output(out)):
        raise OutputConflictError(f"refusing to replace {out}: it is not an activation store (no {MARKER} "
                                  "marker); move it away or set paths.activations to another path")


def resumable_store(out: Path, fingerprint: str) -> ActivationStore | None:
    """The existing store at `out` if it was made with the same fingerprint; otherwise remove it.
    Anything at `out` that a dump did not write is refused, never removed."""
    check_store_path(out)
    remove_leftovers(out)
    if not out.exists():
        return None
    try:
        store = ActivationStore.open(out, allow_incomplete=True)
        if store.attrs.get("fingerprint") == fingerprint and store.has_digests:
            _remove_partial_files(out)
            return store
        reason = ("it was made with other teacher weights, tokens or params" if store.has_digests
                  else "it predates chunk digests, so its chunks cannot be checked")
    except Exception as err:  # noqa: BLE001 - anything unreadable is rebuilt
        reason = f"it is unreadable ({type(err).__name__})"
    tqdm.write(f"dump: removing the existing {out}: {reason}")
    shutil.rmtree(out) if out.is_dir() else out.unlink()
    return None


def unmark_damaged(out: Path, store: ActivationStore) -> ActivationStore:
    """Check every finished chunk against its digest (one read of the store); mark the chunks that
    no longer match as not done (and the store incomplete), so that the dump writes them again."""
    group = zarr.open_group(str(out), mode="r+", zarr_format=3)
    damaged = 0
    for split in SPLITS:
        for chunk, names in sorted(store.damaged_chunks(split).items()):
            tqdm.write(f"dump: {out}/{split} chunk {chunk} ({', '.join(names)}) does not match its recorded "
                       "digest (damaged on disk): writing it again")
            group[f"{PROGRESS}/{split}"][chunk] = np.full(store.n_layers + 1, -1, dtype=np.int64)
            damaged += 1
    if damaged and store.complete:
        group.attrs.update({"complete": False})
    return ActivationStore.open(out, allow_incomplete=True)


def finalise(out: Path) -> ActivationStore:
    """Check every chunk is marked done, then write the summary and `complete: true` last."""
    store = ActivationStore.open(out, allow_incomplete=True)
    summary = {}
    for split in SPLITS:
        prog = store.progress(split)  # (n_chunks, N+1)
        if (prog < 0).any():
            raise RuntimeError(f"{out}: chunks {np.flatnonzero(prog[:, 0] < 0).tolist()} of {split} were not written")
        summary[split] = {"sequences": store.n_sequences(split), "chunks": int(len(prog)),
                          "non_finite_per_layer": prog.sum(axis=0).tolist()}
    nonfinite = sum(sum(v["non_finite_per_layer"]) for v in summary.values())
    if nonfinite:
        tqdm.write(f"dump: warning: {nonfinite} non-finite values stored (fp16 overflow?): see `inspect`")
    group = zarr.open_group(str(out), mode="r+", zarr_format=3)
    group.attrs.update({"summary": summary, "complete": True})  # one atomic zarr.json write
    return ActivationStore.open(out)
