"""MultiHyena forward vs the Hyena mixer vs SDPA attention on CPU, side by side in one run.

All three at SmolLM2-135M's width: d = 576, 9 query heads of 64, 3 key/value heads, fp32.
  * multihyena-quadratic / -banded / -fft: hyena.model.multihyena.MultiHyenaOperator with its path forced
    (masked quadratic in query blocks / the same over the filters' support only / FFT over the N^2
    channels of k (x) v), filters as the student's default (decay_len 256: support ~1.2K taps);
  * hyena: hyena.model.operator.HyenaOperator (order 2), the current student's mixer;
  * sdpa: q/k/v/o projections and torch's scaled_dot_product_attention(is_causal=True) with GQA
    (no rotary: the same work as the teacher's attention minus a few element-wise ops).

Cells: the distillation shape (batch --train-batch at --train-length, fwd and fwd+bwd) and
--lengths at batch 1 (fwd only). Each cell runs in its own subprocess under --timeout seconds: a
cell that runs out of time or memory is reported as skipped, not as a crash. Time = the fastest of
--repeats calls after one warm-up (one call when the warm-up exceeds 20 s). Ratios are against
what MultiHyena's "auto" path runs at that length (quadratic while the filters' ~1.2K-tap
support covers half the sequence, banded beyond).

    python benchmarks/bench_multihyena.py                      # prints a markdown table
    python benchmarks/bench_multihyena.py --lengths 1024 2048   # where the paths cross over
    python benchmarks/bench_multihyena.py --interleave          # B=8 T=512, mixers in turn (shared machines)
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
D_MODEL, HEADS, KV_HEADS = 576, 9, 3
SUPPORT = 1221  # taps of the default filters above 1e-7 of their peak (decay_len 256)
MIXERS = ("multihyena-quadratic", "multihyena-banded", "multihyena-fft", "hyena", "sdpa")


def build(mixer: str, max_len: int):
    import torch.nn as nn
    import torch.nn.functional as F

    from hyena.model.multihyena import MultiHyenaOperator
    from hyena.model.operator import HyenaConfig, HyenaOperator

    cfg = HyenaConfig(max_len=max(max_len, 2), decay_len=256)
    if mixer.startswith("multihyena-"):
        return MultiHyenaOperator(D_MODEL, HEADS, KV_HEADS, cfg, path=mixer.split("-", 1)[1])
    if mixer == "hyena":
        return HyenaOperator(D_MODEL, cfg)
    hd = D_MODEL // HEADS

    class SDPA(nn.Module):
        def __init__(self):
            super().__init__()
            self.qkv = nn.Linear(D_MODEL, D_MODEL + 2 * KV_HEADS * hd, bias=False)
            self.o = nn.Linear(D_MODEL, D_MODEL, bias=False)

        def forward(self, u):
            B, L, _ = u.shape
            q, k, v = self.qkv(u).split([D_MODEL, KV_HEADS * hd, KV_HEADS * hd], dim=-1)
            q = q.view(B, L, HEADS, hd).transpose(1, 2)
            k, v = (t.view(B, L, KV_HEADS, hd).transpose(1, 2) for t in (k, v))
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
            return self.o(y.transpose(1, 2).reshape(B, L, D_MODEL))

    return SDPA()


def worker(mixer: str, L: int, batch: int, mode: str, repeats: int) -> dict:
    import torch

    torch.manual_seed(0)
    module = build(mixer, L)
    u = torch.randn(batch, L, D_MODEL)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    def call():
        if mode == "fwd":
            with torch.no_grad():
                module.eval()(u)
        else:
            x = u.clone().requires_grad_(True)
            module.train()(x).sum().backward()

    times = []
    for i in range(repeats + 1):
        t0 = time.perf_counter()
        call()
        times.append(time.perf_counter() - t0)
        if i == 0 and times[0] > 20:
            break
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base
    best = min(times[1:]) if len(times) > 1 else times[0]
    return {"seconds": best, "n": max(1, len(times) - 1), "peak_mb": peak / 1024}


def interleaved(args) -> str:
    """The distillation shape with the three main mixers called in turn, --repeats rounds, the
    fastest of each: on a shared machine every mixer sees the same load."""
    import torch

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    mixers = ("multihyena-quadratic", "hyena", "sdpa")
    mods = {m: build(m, args.train_length) for m in mixers}
    u = torch.randn(args.train_batch, args.train_length, D_MODEL)
    best = {(m, mode): float("inf") for m in mixers for mode in ("fwd", "fwd+bwd")}
    for _ in range(args.repeats + 1):
        for m, mod in mods.items():
            t0 = time.perf_counter()
            with torch.no_grad():
                mod.eval()(u)
            best[m, "fwd"] = min(best[m, "fwd"], time.perf_counter() - t0)
            x = u.clone().requires_grad_(True)
            t0 = time.perf_counter()
            mod.train()(x).sum().backward()
            best[m, "fwd+bwd"] = min(best[m, "fwd+bwd"], time.perf_counter() - t0)
    ref = {mode: best["multihyena-quadratic", mode] for mode in ("fwd", "fwd+bwd")}
    rows = ["| mixer | fwd (s) | fwd+bwd (s) | MultiHyena fwd / this | MultiHyena fwd+bwd / this |",
            "| --- | ---: | ---: | ---: | ---: |"]
    rows += [f"| {m} | {best[m, 'fwd']:.3f} | {best[m, 'fwd+bwd']:.3f} | {ref['fwd'] / best[m, 'fwd']:.2f} | "
             f"{ref['fwd+bwd'] / best[m, 'fwd+bwd']:.2f} |" for m in mixers]
    return "\n".join(rows) + f"\n\nload average: {os.getloadavg()}"


def run_cell(mixer: str, L: int, batch: int, mode: str, args) -> dict:
    cmd = [sys.executable, __file__, "--worker", json.dumps([mixer, L, batch, mode, args.repeats])]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout, cwd=ROOT, env=env)
    except subprocess.TimeoutExpired:
        return {"skipped": f">{args.timeout}s"}
    if out.returncode != 0:
        tail = (out.stderr.strip().splitlines() or ["?"])[-1][:80]
        return {"skipped": "out of memory" if out.returncode in (-9, 137) else tail}
    return json.loads(out.stdout.strip().splitlines()[-1])


def table(cells: list[tuple[str, int, int, str, dict]]) -> str:
    rows = ["| shape | mode | mixer | seconds | peak MB | auto MultiHyena / this |", "|---|---|---|---:|---:|---:|"]
    for (L, batch, mode) in dict.fromkeys((c[1], c[2], c[3]) for c in cells):
        group = {c[0]: c[4] for c in cells if c[1:4] == (L, batch, mode)}
        auto = group.get("multihyena-quadratic" if L < 2 * SUPPORT else "multihyena-banded", {})
        for mixer, r in group.items():
            if "skipped" in r:
                rows.append(f"| B={batch} T={L} | {mode} | {mixer} | skipped: {r['skipped']} | | |")
                continue
            ratio = f"{auto['seconds'] / r['seconds']:.2f}" if "seconds" in auto else "n/a"
            rows.append(f"| B={batch} T={L} | {mode} | {mixer} | {r['seconds']:.3f} (n={r['n']}) | "
                        f"{r['peak_mb']:.0f} | {ratio} |")
    return "\n".join(rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--train-batch", type=int, default=8)
    p.add_argument("--train-length", type=int, default=512)
    p.add_argument("--lengths", type=int, nargs="*", default=[16384, 65536])
    p.add_argument("--mixers", nargs="*", default=list(MIXERS))
    p.add_argument("--no-train-shape", action="store_true", help="only the --lengths cells")
    p.add_argument("--interleave", action="store_true", help="only the distillation shape, mixers in turn, in-process")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--timeout", type=int, default=600)
    args = p.parse_args()
    if args.worker:
        import torch

        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
        sys.path.insert(0, str(ROOT))
        print(json.dumps(worker(*json.loads(args.worker))))
        return
    sys.path.insert(0, str(ROOT))
    if args.interleave:
        print(interleaved(args))
        return
    shapes = [] if args.no_train_shape else [(args.train_length, args.train_batch, "fwd"),
                                             (args.train_length, args.train_batch, "fwd+bwd")]
    shapes += [(L, 1, "fwd") for L in args.lengths]
    cells = []
    for L, batch, mode in shapes:
        for mixer in args.mixers:
            if mixer == "multihyena-banded" and L < 2 * SUPPORT:
                continue  # the support covers half the sequence: auto runs quadratic
            r = run_cell(mixer, L, batch, mode, args)
            print(f"{mixer:22s} B={batch} T={L} {mode}: {r}", flush=True)
            cells.append((mixer, L, batch, mode, r))
    print(f"\nload average at the end: {os.getloadavg()}\n")
    print(table(cells))


if __name__ == "__main__":
    main()
