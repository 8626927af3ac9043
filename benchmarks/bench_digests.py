"""What the activation store's chunk digests cost (issue 28), measured side by side in one run.

    python benchmarks/bench_digests.py [--sequences 256] [--repeats 3]

A float16 array shaped like cpu-smoke's activations (L=512, d=576, 64-sequence chunks) in a
temporary Zarr store, from the page cache:
  dump:    writing every chunk (zarr, what the dump's writer thread does, without the teacher's
           forward pass, which dominates a real dump) vs digesting every written chunk file;
  distill: the stage's read (check_chunks without digests + load_all) vs check_chunks with digests.
Prints each and the ratio of the digests' extra cost to it.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import zarr

from hyena.data.store import check_chunks, chunk_path, file_digest
from hyena.train.batches import load_all


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sequences", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    L, d, rows = 512, 576, 64
    n_chunks = -(-args.sequences // rows)
    data = np.random.default_rng(0).standard_normal((args.sequences, L, d), dtype=np.float32).astype(np.float16)
    with tempfile.TemporaryDirectory() as tmp:
        arr = zarr.create_array(str(Path(tmp) / "a.zarr"), shape=data.shape, chunks=(rows, L, d),
                                dtype="float16", fill_value=np.nan, compressors=None)

        def write():
            for a in range(0, args.sequences, rows):
                arr[a:a + rows] = data[a:a + rows]

        def digest_all():
            return [file_digest(chunk_path(arr, c)) for c in range(n_chunks)]

        write()
        digests = np.array(digest_all(), dtype=np.uint64)
        t = {k: [] for k in ("write", "digest", "load", "check", "check_digest")}
        for _ in range(args.repeats):  # alternating, so that both sides see the same machine
            t["write"].append(timed(write))
            t["digest"].append(timed(digest_all))
            t["load"].append(timed(lambda: load_all(arr, 1 << 40)))
            t["check"].append(timed(lambda: check_chunks(arr, "bench", "n/a")))
            t["check_digest"].append(timed(lambda: check_chunks(arr, "bench", "n/a", digests=digests)))
    m = {k: statistics.median(v) for k, v in t.items()}
    gb = data.nbytes / 1e9
    print(f"array {args.sequences}x{L}x{d} float16 = {gb:.2f} GB, {n_chunks} chunks, median of {args.repeats}")
    print(f"dump:    write {m['write']:.3f} s, digest of the written files {m['digest']:.3f} s "
          f"-> digest / write = {m['digest'] / m['write']:.3f} (the teacher's forward pass not counted)")
    read = m["check"] + m["load"]
    extra = m["check_digest"] - m["check"]
    print(f"distill: read = check_chunks {m['check']:.3f} s + load_all {m['load']:.3f} s = {read:.3f} s; "
          f"check_chunks with digests {m['check_digest']:.3f} s -> extra / read = {extra / read:+.3f}")


if __name__ == "__main__":
    main()
