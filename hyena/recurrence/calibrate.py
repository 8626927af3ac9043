"""Activation-aware modal fits: match what each mixer OUTPUTS on real text, not only its filter.

`fit_modal` matches the filter tap for tap, as the Laughing Hyena paper does. That fails for
filters that look like noise: an implicit filter with a high sine frequency (Hyena's Pile config
uses 14) that distillation has barely moved has a flat spectrum and flat Hankel singular values,
and no 16 modes come close (relative L2 error ~0.9, measured on a distilled SmolLM2 student).
Yet the layer only needs the filter's effect on the signals it really convolves, and those are
far from white. Two steps per layer, both teacher-forced on the convolutional student's own
activations (the inputs u of each mixer on a few calibration windows):

1. `output_weighted_residues`: keep the fitted poles and solve, per channel and in closed form,
   the residues that minimise the error of the filter's contribution to the mixer output,

       sum_b || x0_b * ((k_hat - k) conv w_b) ||^2 / ||x0_b * (k conv w_b)||^2
           + filter_weight * ||k_hat - k||^2 / ||k||^2

   where w_b is the long filter's input and x0_b the outer gate (the output projection is left
   out: it is shared and mixes channels). The residues enter linearly, so this is one small
   (2N x 2N) least-squares solve per channel; the filter term keeps taps that the calibration
   windows do not reach (beyond their length) close to the original.
2. `refine_on_outputs`: Adam on every modal parameter (poles included) against the mixer's exact
   output, ||mixer_rec(u) - mixer(u)||^2 / ||mixer(u)||^2.

For a filter that N modes represent exactly both steps keep the exact solution (it has zero loss).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from hyena.core.config import Config, param
from hyena.core.runtime import first_output
from hyena.model.fftconv import causal_conv_from_spectrum, fft_size
from hyena.model.operator import HyenaOperator
from hyena.recurrence.mixer import RecurrentHyenaMixer
from hyena.recurrence.modal import ModalFilter, _design, _design_gram, _design_rhs


@dataclass
class CalibrationConfig(Config):
    """params.yaml `recurrent.calib`: how the modal fits are calibrated on real activations."""
    SECTION = "recurrent.calib"

    sequences: int = param(2, "training windows whose real activations calibrate the fits (0: fit the filters alone, as the paper)", ge=0)
    filter_weight: float = param(0.01, "weight of the plain filter error next to each mixer's output error", ge=0)
    steps: int = param(0, "Adam steps on each mixer's output error after the closed-form residues (~0.5 s a step a SmolLM2 layer)", ge=0)
    lr: float = param(3e-3, "learning rate of those steps (cosine-decayed to 10%)", gt=0)


@torch.no_grad()
def capture_mixer_io(model, input_ids: torch.Tensor) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """Every Hyena mixer's (input u, output y), each (B, L, d), keyed by its 0-based layer, from one
    stateless forward pass of `model` (a student or recurrent student) on input_ids (B, L)."""
    captured: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def hook(i):
        def grab(_module, args, kwargs, out):
            u = args[0] if args else kwargs["hidden_states"]
            captured[i] = (u.detach(), first_output(out).detach())
        return grab

    layers = model.hyena_layers()
    handles = [model.mixer(i).register_forward_hook(hook(i), with_kwargs=True) for i in layers]
    try:
        model(input_ids=input_ids, use_cache=False)
    finally:
        for h in handles:
            h.remove()
    return {i: captured[i] for i in layers}


@torch.no_grad()
def long_filter_inputs(op: HyenaOperator, u: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
    """What each long filter of `op` convolves on input u (B, L, d), with the exact filters:
    ([w_0, ..., w_{F-1}] each (B, d, L), in the order of `op.filter_fn`'s filters; outer gate x0 (B, d, L))."""
    x, v = op.gates(u)
    L = u.shape[1]
    n = fft_size(L)
    H = op.filter_fn.response(L, n)  # (F, d, n/2+1), pass-through folded in
    ws = []
    for o, x_i in enumerate(reversed(x[1:])):
        w = v * x_i  # (B, d, L)
        ws.append(w)
        v = causal_conv_from_spectrum(w, H[o], n)
    return ws, x[0]


@torch.no_grad()
def output_weighted_residues(modal: ModalFilter, h: torch.Tensor, inputs: list[torch.Tensor],
                             gate: torch.Tensor | None = None, filter_weight: float = 0.01,
                             ridge: float = 1e-9, block: int = 64) -> None:
    """Re-solve `modal`'s residues (poles fixed) for the output-weighted loss above; in place.

    h: the exact filters (F, d, L') (tap 0 is the pass-through and is not touched; L' >= the
    calibration length); inputs: per filter, its input w (B, d, T) on the calibration windows;
    gate: (B, d, T) multiplying the LAST filter's output (x0), or None. fp64 throughout.
    """
    F_, d, L_fit = h.shape
    if len(inputs) != F_:
        raise ValueError(f"{len(inputs)} filter inputs for {F_} filters")
    N = modal.order
    for o, w in enumerate(inputs):
        T = w.shape[-1]
        if T > L_fit:
            raise ValueError(f"calibration windows ({T} tokens) are longer than the fitted filters ({L_fit} taps)")
        g_out = gate if o == F_ - 1 else None
        n = fft_size(T)
        decay, theta = modal.decay()[o].double(), modal.theta[o].double()  # (d, N)
        sol = []
        for c0 in range(0, d, block):
            c1 = min(d, c0 + block)
            A = _design(decay[c0:c1], theta[c0:c1], T - 1).transpose(1, 2)  # (c, 2N, T-1): Re R, Im R
            A = torch.nn.functional.pad(A, (1, 0))  # tap 0 belongs to D: (c, 2N, T)
            k = h[o, c0:c1].double().clone()
            k[:, 0] = 0.0  # (c, L')
            Wf = torch.fft.rfft(w[:, c0:c1].double(), n=n)  # (B, c, n/2+1)
            Z = torch.fft.irfft(torch.fft.rfft(A, n=n)[None] * Wf[:, :, None], n=n)[..., :T]  # (B, c, 2N, T)
            z = torch.fft.irfft(torch.fft.rfft(k[:, :T], n=n)[None] * Wf, n=n)[..., :T]  # (B, c, T)
            if g_out is not None:
                gt = g_out[:, c0:c1].double()
                Z, z = Z * gt[:, :, None], z * gt
            out_scale = z.pow(2).sum(dim=(0, 2)).clamp_min(1e-30)  # (c,)
            G = torch.einsum("bcjt,bckt->cjk", Z, Z) / out_scale[:, None, None]
            r = torch.einsum("bcjt,bct->cj", Z, z) / out_scale[:, None]
            if filter_weight > 0:
                f_scale = k.pow(2).sum(-1).clamp_min(1e-30) / filter_weight  # (c,)
                # the filter error over all L' taps, in closed form (the design is never formed at L')
                G = G + _design_gram(decay[c0:c1], theta[c0:c1], L_fit - 1) / f_scale[:, None, None]
                r = r + _design_rhs(decay[c0:c1], theta[c0:c1], k[:, 1:]) / f_scale[:, None]
            diag = G.diagonal(dim1=1, dim2=2).mean(-1).clamp_min(1e-30)
            G = G + (ridge * diag)[:, None, None] * torch.eye(2 * N, dtype=G.dtype)
            sol.append(torch.linalg.solve(G, r[..., None])[..., 0])  # (c, 2N)
        x = torch.cat(sol)  # (d, 2N)
        modal.residue_re[o] = x[:, :N].to(modal.residue_re.dtype)
        modal.residue_im[o] = x[:, N:].to(modal.residue_im.dtype)


def refine_on_outputs(mixer: RecurrentHyenaMixer, u: torch.Tensor, y: torch.Tensor, steps: int,
                      lr: float = 3e-3, progress: bool = False, desc: str = "output refine") -> list[float]:
    """Adam on `mixer.modal`'s parameters so that mixer.chunk(u) matches y (the exact mixer's output
    on u), everything else frozen. Keeps the best parameters seen. Returns the relative L2 error
    before and after each step (length steps + 1)."""
    if steps <= 0:
        return []
    modal = mixer.modal
    params = list(modal.parameters())
    flags = [p.requires_grad for p in params]
    modal.requires_grad_(True)
    opt = torch.optim.Adam(params, lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps, eta_min=lr * 0.1)
    ref = y.detach().pow(2).sum()
    history, best, best_state = [], float("inf"), None
    try:
        for step in tqdm(range(steps + 1), desc=desc, disable=not progress, leave=False):
            with torch.enable_grad():
                loss = (mixer.chunk(u) - y).pow(2).sum() / ref
            value = float(loss.detach()) ** 0.5
            history.append(value)
            if value < best:
                best, best_state = value, {k: t.detach().clone() for k, t in modal.state_dict().items()}
            if step == steps:
                break
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    finally:
        if best_state is not None:
            modal.load_state_dict(best_state)
        for p, f in zip(params, flags, strict=True):
            p.requires_grad_(f)
    return history
