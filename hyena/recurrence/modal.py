"""Modal (diagonal state-space) form of long convolution filters (Laughing Hyena, arXiv 2310.18780).

Per channel c, a filter h of length L is represented as

    h[0]     = D                                   (pass-through; the operator's bias folds in here)
    h[k]     = Re( sum_{n<N} R_n p_n^(k-1) ),  k >= 1

with complex poles p_n = r_n e^{i theta_n}, 0 < r_n < 1, and complex residues R_n. This is the
impulse response of the diagonal linear recurrence

    s_t = p * s_{t-1} + u_t,        y_t = D u_t + Re( sum_n R_n s_{t-1,n} )

so a filter of any length costs O(N) per step and O(N) memory. The radius is stored as a decay
rate r = exp(-decay), decay = exp(log_decay) + min_decay > 0, so |p| < 1 holds by construction
(also after rounding to fp32, as min_decay >= 1e-6 > fp32's spacing below 1). Powers p^k are
computed as exp(-k decay + i k theta) with the exponent in fp64, so the phase k*theta stays exact
to fp32 precision even at k ~ 1e5.

`fit_modal` fits (p, R) to materialised filters: a matrix-pencil (Hankel SVD) initialisation of
the poles, exact least squares for the residues given the poles, Adam on all parameters, and a
final exact least-squares solve of the residues. Everything is vectorised over channels.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
from tqdm.auto import tqdm

from hyena.core.config import Config, param


def modal_powers(decay: torch.Tensor, theta: torch.Tensor, start: int, T: int,
                 dtype: torch.dtype = torch.complex64, block: int = 64) -> torch.Tensor:
    """p^k for k = start .. start+T-1: (..., N) poles -> (..., N, T) complex.

    p^(start + block*a + b) = p^(start + block*a) * p^b: two small tables of exact powers and one
    complex multiply per output (a direct exp/cos/sin per element is several times slower). The
    exponents (-k decay, k theta mod 2 pi) are formed in fp64, so large k loses no phase.
    """
    n_blocks = -(-T // block)
    dev = decay.device
    d64, t64 = decay.to(torch.float64)[..., None], theta.to(torch.float64)[..., None]

    def exact(k: torch.Tensor) -> torch.Tensor:  # (..., N, len(k)) complex128
        mag = torch.exp(-d64 * k)
        ang = torch.remainder(t64 * k, 2 * math.pi)
        return torch.complex(mag * torch.cos(ang), mag * torch.sin(ang))

    ar = torch.arange(max(n_blocks, block), device=dev, dtype=torch.float64)
    big = exact(start + block * ar[:n_blocks]).to(dtype)  # (..., N, n_blocks)
    small = exact(ar[:block]).to(dtype)  # (..., N, block)
    out = (big[..., :, None] * small[..., None, :]).flatten(-2)  # (..., N, n_blocks*block)
    return out[..., :T]


def _block(T: int) -> int:
    """Time block of the two-level power tables: ~sqrt(T), so both tables stay small."""
    return int(min(512, max(16, 1 << math.ceil(math.log2(max(T, 1)) / 2))))


def _power_tables(decay: torch.Tensor, theta: torch.Tensor, start: int, T: int, block: int):
    """(big, small): p^(start + block*a) for a < ceil(T/block), (C, N, n_blocks), and p^j for
    j < block, (C, N, block); complex64. The exponents (-k decay, k theta mod 2 pi) are formed in
    fp64, which is where large k would lose phase; exp/cos/sin of the reduced values then run in
    fp32, as precise as the complex64 result and several times cheaper."""
    n_blocks = -(-T // block)
    d64, t64 = decay.to(torch.float64)[..., None], theta.to(torch.float64)[..., None]

    def exact(k: torch.Tensor) -> torch.Tensor:
        mag = torch.exp((-d64 * k).to(torch.float32))
        ang = torch.remainder(t64 * k, 2 * math.pi).to(torch.float32)
        return torch.polar(mag, ang)

    ar = torch.arange(max(n_blocks, block), device=decay.device, dtype=torch.float64)
    return exact(start + block * ar[:n_blocks]), exact(ar[:block])


def modal_response(coef: torch.Tensor, decay: torch.Tensor, theta: torch.Tensor, start: int, T: int) -> torch.Tensor:
    """Re(sum_n coef[c, m, n] p[c, n]^(start + t)) for t < T: coef (C, M, N) complex, poles as
    (decay, theta) (C, N) -> (C, M, T) fp32.

    Never materialises the (C, N, T) powers: with t = block*a + j, p^(start+t) =
    p^(start + block a) p^j, so it is one real batched matmul of the coefficients times the block
    powers, (C, M*n_blocks, 2N), against the small table [Re; Im] of p^j, (C, 2N, block).
    O(C M T N) work, O(C N sqrt(T)) tables; differentiable (calibration trains through it)."""
    C, M, N = coef.shape
    block = _block(T)
    big, small = _power_tables(decay, theta, start, T, block)  # (C, N, nb), (C, N, block)
    scaled = (coef[..., None] * big[:, None]).transpose(2, 3)  # (C, M, nb, N)
    lhs = torch.cat([scaled.real, -scaled.imag], dim=-1).reshape(C, -1, 2 * N)  # Re(z w) = zr wr - zi wi
    rhs = torch.cat([small.real, small.imag], dim=1)  # (C, 2N, block)
    return torch.bmm(lhs, rhs).reshape(C, M, -1)[..., :T]


def modal_absorb(w: torch.Tensor, decay: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """sum_t p^(T-1-t) w[c, m, t]: the modal state after inputs w (C, M, T) real, poles (C, N);
    (C, M, N) complex64. Same two-level tables as `modal_response`, run on the time-reversed input:
    with T-1-t = block*a + j, a real batched matmul per block, then one weighted sum over blocks."""
    C, M, T = w.shape
    N = decay.shape[-1]
    block = _block(T)
    big, small = _power_tables(decay, theta, 0, T, block)  # (C, N, nb), (C, N, block)
    n_blocks = big.shape[-1]
    rev = torch.nn.functional.pad(w.flip(-1).to(torch.float32), (0, n_blocks * block - T))
    parts = torch.bmm(rev.reshape(C, M * n_blocks, block),
                      torch.cat([small.real, small.imag], dim=1).transpose(1, 2))  # (C, M*nb, 2N)
    parts = torch.complex(parts[..., :N], parts[..., N:]).reshape(C, M, n_blocks, N)
    return (parts * big.transpose(1, 2)[:, None]).sum(2)  # (C, M, N)


class ModalFilter(nn.Module):
    """Filters of `shape` channels (e.g. (n_filters, d)) in modal form with N complex modes each.

    Parameters (all fp32): log_decay, theta, residue_re, residue_im of shape (*shape, N) and the
    pass-through D of shape `shape`.
    """

    def __init__(self, shape: tuple[int, ...], order: int, min_decay: float = 1e-6):
        super().__init__()
        if min_decay < 1e-6:
            raise ValueError(f"min_decay must be >= 1e-6 to keep |p| < 1 in fp32 (got {min_decay})")
        self.shape, self.order, self.min_decay = tuple(shape), order, float(min_decay)
        full = (*self.shape, order)
        self.log_decay = nn.Parameter(torch.zeros(full))
        self.theta = nn.Parameter(torch.zeros(full))
        self.residue_re = nn.Parameter(torch.zeros(full))
        self.residue_im = nn.Parameter(torch.zeros(full))
        self.D = nn.Parameter(torch.zeros(self.shape))

    # ---- the poles and residues -------------------------------------------------------------
    def decay(self) -> torch.Tensor:
        """-log r per mode, strictly positive: (..., N)."""
        return torch.exp(self.log_decay) + self.min_decay

    def poles(self) -> torch.Tensor:
        """p = exp(-decay + i theta): (..., N) complex64, |p| <= exp(-min_decay) < 1."""
        return torch.polar(torch.exp(-self.decay()), self.theta)

    def residues(self) -> torch.Tensor:
        return torch.complex(self.residue_re, self.residue_im)  # (..., N)

    def set_modes(self, decay: torch.Tensor, theta: torch.Tensor, residue: torch.Tensor, D: torch.Tensor) -> None:
        """Load poles (as decay = -log r > min_decay), residues and the pass-through term."""
        with torch.no_grad():
            excess = (decay.to(torch.float64) - self.min_decay).clamp_min(1e-30)
            self.log_decay.copy_(torch.log(excess))
            self.theta.copy_(torch.remainder(theta.to(torch.float64), 2 * math.pi))
            self.residue_re.copy_(residue.real)
            self.residue_im.copy_(residue.imag)
            self.D.copy_(D)

    # ---- materialised filters ---------------------------------------------------------------
    def tail_kernel(self, L: int) -> torch.Tensor:
        """k[0] = 0, k[t] = Re(sum_n R_n p_n^(t-1)) for 1 <= t < L: (..., L) fp32."""
        N = self.order
        decay, theta, R = self.decay().reshape(-1, N), self.theta.reshape(-1, N), self.residues().reshape(-1, 1, N)
        tail = modal_response(R, decay, theta, 0, L - 1)[:, 0] if L > 1 else R.real[:, 0, :0]  # (C, L-1)
        return torch.nn.functional.pad(tail, (1, 0)).reshape(*self.shape, L)

    def state_bytes(self, batch: int = 1) -> int:
        """Bytes of the complex64 state this filter needs per batch element."""
        return batch * math.prod(self.shape) * self.order * 8


# ---- fitting ----------------------------------------------------------------------------------


@dataclass
class ModalFitConfig(Config):
    """params.yaml `recurrent.fit`: how `fit_modal` fits N modes to each channel's filter."""

    SECTION = "recurrent.fit"

    order: int = param(16, "complex modes per channel (Laughing Hyena: ~16)", ge=1)
    steps: int = param(300, "Adam steps on channels the matrix-pencil fit leaves above refine_tol (0: none; "
                            "~7 min a SmolLM2 layer per 300 on one CPU thread)", ge=0)
    lr: float = param(1e-2, "learning rate of those steps (cosine-decayed to 1%; targets are RMS-normalised)", gt=0)
    refine_tol: float = param(1e-3, "relative L2 filter error under which a channel is not refined", ge=0)
    min_decay: float = param(1e-6, "poles satisfy |p| <= exp(-min_decay) < 1 (stable)", ge=1e-6)
    ridge: float = param(1e-8, "Tikhonov term of the residue least squares (relative to the Gram diagonal)", ge=0)
    max_radius: float = param(0.99995, "initial poles are clamped to this radius", gt=0, lt=1)
    pencil: int = param(0, "matrix-pencil window (0: min(4 * 2N, (L-1)//2))", ge=0)


@contextlib.contextmanager
def _one_thread():
    """Batched small LAPACK calls (eigh, eig, solve of 32..129-sized matrices) run 10-20x slower
    with 2 OpenMP threads than with 1 on these CPUs (measured): run them single-threaded."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def _design(decay: torch.Tensor, theta: torch.Tensor, M: int) -> torch.Tensor:
    """Real design matrix of the model g[k] = Re(sum R p^k) = sum Re(R) Re(p^k) - Im(R) Im(p^k):
    (C, M, 2N) = [Re V | -Im V]. The fits never form it at the filter's length: they use its Gram
    and its products with the targets, in closed form (`_design_gram`, `_design_rhs`)."""
    V = modal_powers(decay, theta, 0, M, torch.complex128)  # (C, N, M)
    return torch.cat([V.real, -V.imag], dim=1).transpose(1, 2)


def _expm1(re: torch.Tensor, im: torch.Tensor) -> torch.Tensor:
    """exp(re + i im) - 1, accurate when it is small (complex expm1): complex128."""
    half = torch.sin(0.5 * im)
    return torch.complex(torch.expm1(re) * torch.cos(im) - 2 * half * half, torch.exp(re) * torch.sin(im))


def _geometric_sum(re: torch.Tensor, im: torch.Tensor, M: int) -> torch.Tensor:
    """sum_{k<M} exp(k z), z = re + i im with re < 0, in closed form: (e^{Mz} - 1) / (e^z - 1)."""
    den = _expm1(re, im)
    return torch.where(den == 0, torch.full_like(den, M), _expm1(M * re, M * im) / den)


def _design_gram(decay: torch.Tensor, theta: torch.Tensor, M: int) -> torch.Tensor:
    """A^T A for A = _design(decay, theta, M), without A: (C, 2N, 2N) fp64.

    Products of Re/Im of p_a^k and p_b^k are Re/Im of (p_a p_b)^k and (p_a conj(p_b))^k, whose
    sums over k are geometric. O(C N^2) instead of the explicit product's O(C M N^2) time and
    O(C M N) memory (at M = 8K, d = 576 channels and N = 16 the design matrix alone is 1.2 GB)."""
    d64, t64 = decay.to(torch.float64), theta.to(torch.float64)
    re = -(d64[:, :, None] + d64[:, None, :])  # (C, N, N)
    same = _geometric_sum(re, t64[:, :, None] + t64[:, None, :], M)  # sum (p_a p_b)^k
    conj = _geometric_sum(re, t64[:, :, None] - t64[:, None, :], M)  # sum (p_a conj(p_b))^k
    cc = 0.5 * (same.real + conj.real)  # sum Re(p_a^k) Re(p_b^k)
    ss = 0.5 * (conj.real - same.real)  # sum Im(p_a^k) Im(p_b^k)
    cs = -0.5 * (same.imag - conj.imag)  # sum Re(p_a^k) * -Im(p_b^k)
    return torch.cat([torch.cat([cc, cs], dim=2), torch.cat([cs.transpose(1, 2), ss], dim=2)], dim=1)


def _design_rhs(decay: torch.Tensor, theta: torch.Tensor, g: torch.Tensor, block: int = 64) -> torch.Tensor:
    """A^T g for A = _design(decay, theta, M) and targets g (C, M), without A: (C, 2N) fp64.

    It is [Re P, -Im P] with P = sum_k g[k] p^k; with k = block*a + j, P is one real batched
    matmul of g's blocks against the table of p^j, weighted by p^(block a)."""
    C, M = g.shape
    n_blocks = -(-M // block)
    d64, t64 = decay.to(torch.float64), theta.to(torch.float64)
    small = modal_powers(d64, t64, 0, block, torch.complex128)  # (C, N, block): p^j
    big = modal_powers(d64 * block, t64 * block, 0, n_blocks, torch.complex128)  # (C, N, nb): p^(block a)
    gb = torch.nn.functional.pad(g.to(torch.float64), (0, n_blocks * block - M)).reshape(C, n_blocks, block)
    inner = torch.complex(gb @ small.real.transpose(1, 2), gb @ small.imag.transpose(1, 2))  # (C, nb, N)
    P = (inner * big.transpose(1, 2)).sum(1)  # (C, N)
    return torch.cat([P.real, -P.imag], dim=-1)


def _least_squares_residues(decay, theta, g, ridge, mask=None) -> torch.Tensor:
    """Residues minimising ||g - Re(V R)||^2 (+ ridge) for fixed poles: (C, N) complex128.
    `mask` (C, N) bool drops modes (their columns are zeroed, the ridge keeps the solve regular)."""
    G = _design_gram(decay, theta, g.shape[-1])  # (C, 2N, 2N)
    b = _design_rhs(decay, theta, g)  # (C, 2N)
    if mask is not None:
        m = torch.cat([mask, mask], dim=-1).to(G.dtype)
        G, b = G * m[:, :, None] * m[:, None, :], b * m
    scale = G.diagonal(dim1=1, dim2=2).mean(-1).clamp_min(1e-30)  # (C,)
    eye = torch.eye(G.shape[-1], dtype=G.dtype, device=G.device)
    G = G + (ridge * scale + 1e-30)[:, None, None] * eye
    with _one_thread():
        x = torch.linalg.solve(G, b[..., None])[..., 0]  # (C, 2N)
    N = decay.shape[-1]
    return torch.complex(x[:, :N], x[:, N:])


def _hankel_gram(g: torch.Tensor, P: int) -> torch.Tensor:
    """H^T H for the Hankel matrix H[k, i] = g[c, k + i] (k < M - P, i <= P) of each channel's
    tail g (C, M), without forming H: (C, P+1, P+1).

    The first row is a correlation, G[0, l] = sum_{k<K} g[k] g[k+l] with K = M - P rows, taken by
    FFT. Along each diagonal one row of H enters and one leaves: G[i+1, i+1+l] = G[i, i+l]
    + g[K+i] g[K+i+l] - g[i] g[i+l], so the rest is cumulative sums: O(C M log M + C P^2) time and
    O(C P^2) memory, where forming H (d = 576 channels, M = 8K, P = 128: 4.8 GB) and multiplying
    it out took seconds a layer (benchmarks/bench_modal_fit.py)."""
    C, M = g.shape
    K = M - P
    n_fft = 1 << (M - 1).bit_length()  # >= M: lags 0..P of the first K taps do not wrap
    first_row = torch.fft.irfft(torch.fft.rfft(g[:, :K], n=n_fft).conj() * torch.fft.rfft(g, n=n_fft), n=n_fft)
    G = g.new_empty(C, P + 1, P + 1)
    for lag in range(P + 1):
        n = P + 1 - lag  # entries on this diagonal
        first = first_row[:, lag:lag + 1]  # (C, 1): G[0, lag]
        step = g[:, K:K + n - 1] * g[:, K + lag:K + lag + n - 1] - g[:, :n - 1] * g[:, lag:lag + n - 1]
        diag = torch.cat([first, first + step.cumsum(-1)], dim=-1)  # (C, n)
        G.diagonal(offset=lag, dim1=1, dim2=2).copy_(diag)
        G.diagonal(offset=-lag, dim1=1, dim2=2).copy_(diag)
    return G


def _pencil_poles(g: torch.Tensor, cfg: ModalFitConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Initial poles by the matrix-pencil method on each channel's tail g (C, M), fp64.

    A real signal of N complex modes (taking Re) is a real system of order 2N, so the pencil is
    solved at order m = 2N; its eigenvalues come in conjugate pairs (or are real). We keep the
    upper half plane and, among those, the N modes with the largest energy |R|^2 sum |p|^2k.
    Returns (decay, theta), each (C, N).
    """
    C, M = g.shape
    N = cfg.order
    m = min(2 * N, M // 2)
    P = cfg.pencil or min(4 * m, M // 2)
    P = max(P, m + 1)
    # dominant right singular vectors of the Hankel matrix H = top eigenvectors of H^T H (batched
    # SVD of tall matrices is ~100x slower on CPU; squaring the condition number is harmless in fp64 here)
    with _one_thread():
        _, V = torch.linalg.eigh(_hankel_gram(g, P))  # ascending eigenvalues
        V = V.flip(-1)[:, :, :m]  # (C, P+1, m)
        A = torch.linalg.pinv(V[:, :-1]) @ V[:, 1:]  # (C, m, m): shift-invariance of the signal space
        z = torch.linalg.eigvals(A)  # (C, m) complex128
    r = z.abs().clamp(1e-4, cfg.max_radius)
    decay, theta = -torch.log(r), torch.angle(z)
    upper = theta >= 0  # one member of each conjugate pair, plus the real poles
    theta = theta.abs()
    if m < N:  # very short filters: pad with spread-out slow modes
        extra = N - m
        decay = torch.cat([decay, torch.full((C, extra), 0.05, dtype=decay.dtype)], dim=1)
        theta = torch.cat([theta, torch.linspace(0, math.pi, extra, dtype=theta.dtype).expand(C, extra)], dim=1)
        upper = torch.cat([upper, torch.ones(C, extra, dtype=torch.bool)], dim=1)
    # energy of each candidate under a least-squares fit with all candidates
    R = _least_squares_residues(decay, theta, g, 1e-6, mask=upper)
    r2 = torch.exp(-2 * decay)
    energy = R.abs() ** 2 * (1 - r2 ** M) / (1 - r2).clamp_min(1e-12)
    energy = torch.where(upper, energy, torch.full_like(energy, -1.0))
    keep = energy.topk(N, dim=1).indices  # (C, N)
    return decay.gather(1, keep), theta.gather(1, keep)


def _channel_loss(decay, theta, R, g) -> torch.Tensor:
    """||g - Re(V R)||^2 / ||g||^2 per channel: (C,)."""
    V = modal_powers(decay, theta, 0, g.shape[-1], torch.complex128)  # (C, N, M)
    approx = torch.einsum("cn,cnm->cm", R, V).real
    return (approx - g).pow(2).sum(-1) / g.pow(2).sum(-1).clamp_min(1e-30)


def _adam_refine(decay, theta, R, g, cfg: ModalFitConfig, progress: bool, desc: str):
    """Adam on (log(decay - min_decay), theta, Re R, Im R) of the channels g (C, M); keeps, per
    channel, the best parameters seen. fp64 throughout (the tables are small)."""
    params = [torch.log((decay - cfg.min_decay).clamp_min(1e-12)), theta.clone(), R.real.clone(), R.imag.clone()]
    params = [p.detach().requires_grad_(True) for p in params]
    opt = torch.optim.Adam(params, lr=cfg.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, cfg.steps, eta_min=cfg.lr * 0.01)
    best_loss = torch.full((g.shape[0],), math.inf, dtype=g.dtype)
    best = [p.detach().clone() for p in params]
    for step in tqdm(range(cfg.steps + 1), desc=desc, disable=not progress, leave=False):
        ld, th, rr, ri = params
        loss = _channel_loss(torch.exp(ld) + cfg.min_decay, th, torch.complex(rr, ri), g)  # (C,)
        with torch.no_grad():  # the loss belongs to the parameters before this step
            better = loss < best_loss
            best_loss = torch.where(better, loss, best_loss)
            for b, p in zip(best, params, strict=True):
                b[better] = p[better]
        if step == cfg.steps:
            break
        opt.zero_grad(set_to_none=True)
        loss.sum().backward()
        opt.step()
        sched.step()
    ld, th, rr, ri = best
    return torch.exp(ld) + cfg.min_decay, th, torch.complex(rr, ri)


def relative_l2(approx: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """||approx - target|| / ||target|| over the last dim (0 where the target is 0 and matched)."""
    err = (approx - target).norm(dim=-1)
    ref = target.norm(dim=-1)
    return torch.where(ref > 0, err / ref.clamp_min(1e-30), err)


def fit_modal(h: torch.Tensor, cfg: ModalFitConfig | None = None, passthrough: torch.Tensor | None = None,
              progress: bool = False, desc: str = "modal fit") -> tuple[ModalFilter, dict]:
    """Fit N modes to every channel of materialised filters h (..., L).

    h[..., 0] (+ `passthrough`, e.g. the operator's bias) becomes D exactly; h[..., 1:] is fitted.
    The loss is the mean over channels of ||g - g_hat||^2 / ||g||^2 (scale-free per channel).
    Returns the fitted ModalFilter (fp32, on h's device) and a report with the relative L2 error
    of the filters (mean/max over channels, measured with the fp32 parameters).
    """
    with _one_thread():  # many small ops: one thread is 5-15x faster than two on a busy 2-core CPU
        return _fit_modal(h, cfg or ModalFitConfig(), passthrough, progress, desc)


def _fit_modal(h, cfg: ModalFitConfig, passthrough, progress: bool, desc: str) -> tuple[ModalFilter, dict]:
    shape, L = tuple(h.shape[:-1]), h.shape[-1]
    if L < 3:
        raise ValueError(f"need filters of length >= 3 to fit modes (got {L})")
    h = h.detach()
    g = h.reshape(-1, L)[:, 1:].to(torch.float64)  # (C, M) the tail h[1:]
    rms = g.pow(2).mean(-1, keepdim=True).sqrt().clamp_min(1e-30)
    gn = g / rms  # scale-free targets: Adam's step size means the same for every channel
    with torch.no_grad():
        decay, theta = _pencil_poles(gn, cfg)
    refine = torch.zeros(0, dtype=torch.long)
    if cfg.steps > 0:  # Adam on the channels whose initial fit is worse than refine_tol
        with torch.no_grad():
            R = _least_squares_residues(decay, theta, gn, cfg.ridge)
            init_err = _channel_loss(decay, theta, R, gn).sqrt()  # (C,) relative L2 of the init
        refine = (init_err > cfg.refine_tol).nonzero().flatten()
    if len(refine) > 0:
        d_r, t_r, R_r = _adam_refine(decay[refine], theta[refine], R[refine], gn[refine], cfg, progress, desc)
        decay, theta, R = decay.clone(), theta.clone(), R.clone()
        decay[refine], theta[refine], R[refine] = d_r, t_r, R_r
    with torch.no_grad():
        # keep the poles that fp32 will store, then solve the residues exactly for them
        decay = decay.to(torch.float32).to(torch.float64).clamp_min(cfg.min_decay * 1.0001)
        theta = torch.remainder(theta, 2 * math.pi).to(torch.float32).to(torch.float64)
        R = _least_squares_residues(decay, theta, gn, cfg.ridge) * rms  # undo the normalisation

    D = h[..., 0].to(torch.float32)
    if passthrough is not None:
        D = D + passthrough.detach().to(torch.float32).reshape(D.shape)
    modal = ModalFilter(shape, cfg.order, cfg.min_decay).to(h.device)
    modal.set_modes(decay.reshape(*shape, -1), theta.reshape(*shape, -1),
                    R.to(torch.complex64).reshape(*shape, -1), D)
    report = {
        **filter_errors(modal, h),
        "order": cfg.order,
        "fit_len": L,
        "max_pole_radius": float(torch.exp(-modal.decay().detach()).max()),
        "refined_channels": int(len(refine)) if cfg.steps > 0 else 0,
        "channels": int(g.shape[0]),
    }
    return modal, report


@torch.no_grad()
def filter_errors(modal: ModalFilter, h: torch.Tensor) -> dict:
    """Relative L2 error of the modal tails against the filters h (..., L) (tap 0 excluded: it is
    the exact pass-through), measured with the stored fp32 parameters: mean / max / median."""
    err = relative_l2(modal.tail_kernel(h.shape[-1])[..., 1:].double(), h[..., 1:].double())
    return {"filter_rel_l2_mean": float(err.mean()), "filter_rel_l2_max": float(err.max()),
            "filter_rel_l2_median": float(err.median())}
