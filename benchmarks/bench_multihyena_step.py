"""One recurrent MultiHyena decode step (state read + update) at SmolLM2's shape, before and after
the real-arithmetic, in-place step (`RecurrentMultiHyena.step`), interleaved in one process.

Shape: batch 1, 9 heads of 64, 16 modes: a 4.7 MB complex64 state per layer. "complex einsum" is
the step as first written (q^T S through a complex einsum, then S * p + k v^T into a new tensor);
"library" is `RecurrentMultiHyena.read_state` and `advance_state`, as the step runs them.

    python benchmarks/bench_multihyena_step.py [--threads 1] [--repeats 50]
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from hyena.model.operator import HyenaConfig
from hyena.recurrence.multihyena import RecurrentMultiHyena


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=50)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    B, H, n, N = 1, 9, 16, 64
    g = torch.Generator().manual_seed(0)
    mixer = RecurrentMultiHyena(H * N, H, 3, HyenaConfig(max_len=1024), modal_order=n)
    with torch.no_grad():
        mixer.modal.residue_re.normal_(generator=g)
        mixer.modal.residue_im.normal_(generator=g)
    S0 = torch.complex(torch.randn(B, H, n, N, N, generator=g), torch.randn(B, H, n, N, N, generator=g))
    q, k, v = (torch.randn(B, H, N, generator=g) for _ in range(3))
    poles, residues = mixer.modal.poles()[0].detach(), mixer.modal.residues()[0].detach()

    def complex_einsum(S):
        read = torch.einsum("bhi,bhnij->bhnj", q.to(torch.complex64), S)
        y = torch.einsum("bhnj,hn->bhj", read, residues).real
        return y, S * poles[None, :, :, None, None] + (k[..., :, None] * v[..., None, :]).to(torch.complex64)[:, :, None]

    def library(S):
        return mixer.read_state(q, S), mixer.advance_state(S, k, v)

    with torch.no_grad():
        (y0, s0), (y1, s1) = complex_einsum(S0.clone()), library(S0.clone())
        print(f"same result: max |dy| / max |y| = {((y0 - y1).abs().max() / y0.abs().max()).item():.1e}, "
              f"max |dS| = {(s0 - s1).abs().max().item():.1e}")
        times = {"complex einsum": [], "library": []}
        states = {name: S0.clone() for name in times}
        for _ in range(args.repeats):  # interleaved, so that a change of load hits both
            for name, step in (("complex einsum", complex_einsum), ("library", library)):
                t0 = time.perf_counter()
                _, states[name] = step(states[name])
                times[name].append(time.perf_counter() - t0)
    load = os.getloadavg()[0]
    print(f"one layer's step, {args.repeats} steps each, {args.threads} thread(s), load {load:.1f}:")
    for stat, pick in (("median", lambda t: sorted(t)[len(t) // 2]), ("best", min)):
        old, new = pick(times["complex einsum"]), pick(times["library"])
        print(f"  {stat}: complex einsum {old * 1e3:.2f} ms, library {new * 1e3:.2f} ms -> {old / new:.1f}x; "
              f"x 30 layers: {old * 30e3:.0f} vs {new * 30e3:.0f} ms a token")


if __name__ == "__main__":
    main()
