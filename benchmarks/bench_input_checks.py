"""What reading every activation chunk once before distillation costs, next to the read the
distill stage does anyway (`load_all`: the whole array into memory).

    python benchmarks/bench_input_checks.py [--sequences 512] [--repeats 3]

Writes a float16 array shaped like cpu-smoke's activations (L=512, d=576, 64-sequence chunks)
to a temporary Zarr store, then times, alternating and from the page cache: `load_all`, and
`check_chunks` (file present, decodes, finite). Prints both and their ratio.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import zarr

from hyena.data.store import check_chunks
from hyena.train.batches import load_all


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sequences", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    L, d, rows = 512, 576, 64
    with tempfile.TemporaryDirectory() as tmp:
        arr = zarr.create_array(str(Path(tmp) / "a.zarr"), shape=(args.sequences, L, d), chunks=(rows, L, d),
                                dtype="float16", compressors=None)
        rng = np.random.default_rng(0)
        for a in range(0, args.sequences, rows):
            arr[a:a + rows] = rng.standard_normal((min(rows, args.sequences - a), L, d), dtype=np.float32)
        size = arr.nbytes / 1e9
        load_all(arr, 1 << 40)  # warm the page cache
        t_load, t_check = [], []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            load_all(arr, 1 << 40)
            t_load.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            check_chunks(arr, "bench", "n/a")
            t_check.append(time.perf_counter() - t0)
    lo, ch = statistics.median(t_load), statistics.median(t_check)
    print(f"array {args.sequences}x{L}x{d} float16 = {size:.2f} GB, {-(-args.sequences // rows)} chunks")
    print(f"load_all (distill's own read): {lo:.2f} s ({size / lo:.2f} GB/s)")
    print(f"check_chunks (extra pass):     {ch:.2f} s ({size / ch:.2f} GB/s)")
    print(f"check / load = {ch / lo:.2f}")


if __name__ == "__main__":
    main()
