"""The products the Laughing Hyena modal fit solves with, explicit against closed form, side by side.

At the `distill-recurrent` stage's shape (one SmolLM2 layer: d = 576 channels, 8,191 filter taps,
16 modes, a matrix-pencil window of 128) the fit needs two Gram matrices per channel:

- H^T H of the Hankel matrix of the filter tail (the pencil's signal space). Explicit: H is
  formed, (d, 8063, 129) fp64 = 4.8 GB. Closed form: `_hankel_gram`, one diagonal recursion.
- A^T A and A^T g of the modal design matrix (the residues' least squares, solved twice a layer,
  and once more per calibration block). Explicit: A is formed, (d, 8191, 32) fp64 = 1.2 GB.
  Closed form: `_design_gram` (geometric sums) and `_design_rhs` (blocked power sums).

Prints wall seconds of each and the largest relative difference (one thread, as the fit runs).

    python benchmarks/bench_modal_fit.py [--channels 576] [--taps 8191] [--order 16]
"""

from __future__ import annotations

import argparse
import time

import torch

from hyena.recurrence.modal import _design, _design_gram, _design_rhs, _hankel_gram


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--channels", type=int, default=576)
    ap.add_argument("--taps", type=int, default=8191)
    ap.add_argument("--order", type=int, default=16)
    args = ap.parse_args()
    torch.set_num_threads(1)
    C, M, N = args.channels, args.taps, args.order
    P = 4 * 2 * N
    g = torch.Generator().manual_seed(0)
    decay = torch.rand(C, N, generator=g, dtype=torch.float64) * 0.02 + 1e-4
    theta = torch.rand(C, N, generator=g, dtype=torch.float64) * 3.14
    y = torch.randn(C, M, generator=g, dtype=torch.float64).cumsum(-1) * torch.exp(-torch.arange(M) / 2000.0)

    def explicit_design():
        A = _design(decay, theta, M)
        return A.transpose(1, 2) @ A, (A.transpose(1, 2) @ y[..., None])[..., 0]

    def explicit_hankel():
        H = y.unfold(-1, P + 1, 1).contiguous()
        return H.transpose(1, 2) @ H

    (G_e, b_e), t_de = timed(explicit_design)
    (G_c, b_c), t_dc = timed(lambda: (_design_gram(decay, theta, M), _design_rhs(decay, theta, y)))
    H_e, t_he = timed(explicit_hankel)
    H_c, t_hc = timed(lambda: _hankel_gram(y, P))
    print(f"{C} channels, {M} taps, {N} modes, pencil window {P}; one thread")
    print(f"design Gram + rhs : explicit {t_de:6.2f} s  closed form {t_dc:6.3f} s  ({t_de / t_dc:5.1f}x)  "
          f"rel diff {max(rel(G_c, G_e), rel(b_c, b_e)):.1e}")
    print(f"Hankel Gram       : explicit {t_he:6.2f} s  closed form {t_hc:6.3f} s  ({t_he / t_hc:5.1f}x)  "
          f"rel diff {rel(H_c, H_e):.1e}")


if __name__ == "__main__":
    main()
