"""The Hyena operator (Poli et al. 2023, arXiv 2302.10866), as one self-contained module.

For an input u of shape (B, L, d) and order N (the reference code's "order": N gates, N-1 long
filters):

    x_0, ..., x_{N-1}, v = split(shortconv(W_in u))          each (B, d, L)
    for i = N-1 .. 1:   v = h_i * (x_i v) + b_i (x_i v)        "*" = causal convolution over L
    y = W_out (x_0 v)

The long filters h_i are *implicit*: a small FFN of a positional embedding z(t) with sine
activations, multiplied by an exponentially decaying window. They are generated for any length
L <= max_len, so parameters do not grow with context. The convolution runs by FFT in
O(L log L), always in fp32 (torch.fft rejects bf16 and needs power-of-two sizes for fp16).

`causality_violation` is a built-in check: the gradient of output t with respect to any input
position > t must be exactly zero.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class HyenaConfig:
    """Hyena settings. Defaults follow the reference `standalone_hyena.py`."""

    order: int = 2  # gates in the chain; order-1 long filters (2 = one long filter, as the paper)
    filter_order: int = 64  # hidden width of the implicit filter FFN
    filter_layers: int = 2  # hidden [Linear -> Sin] blocks between the first and last Linear
    emb_dim: int = 3  # positional embedding size: t plus (emb_dim-1)/2 (cos, -sin) bands; odd, >= 3
    short_filter_len: int = 3  # causal depthwise conv kernel applied to all projections
    max_len: int = 2048  # longest sequence a filter is generated for; also the time normalisation
    sine_freq: float = 1.0  # initial (trainable) frequency w in sin(w x) (14 in the Pile config)
    modulate: bool = True  # multiply filters by an exponential decay window
    fast_decay_pct: float = 0.3  # fastest channel decays to `decay_target` at t = 0.3
    slow_decay_pct: float = 1.5  # slowest channel decays to `decay_target` at t = 1.5
    decay_target: float = 1e-2
    modulation_shift: float = 0.0

    def __post_init__(self) -> None:
        if self.order < 2:
            raise ValueError(f"hyena.order must be >= 2 (got {self.order}): order-1 long filters")
        if self.emb_dim < 3 or self.emb_dim % 2 == 0:
            raise ValueError(f"hyena.emb_dim must be odd and >= 3 (got {self.emb_dim})")
        if self.short_filter_len < 1:
            raise ValueError(f"hyena.short_filter_len must be >= 1 (got {self.short_filter_len})")

    def to_dict(self) -> dict:
        return asdict(self)


def fft_causal_conv(u: torch.Tensor, h: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """Causal convolution y[t] = sum_{s<=t} h[s] u[t-s] (+ bias * u[t]) per channel, by FFT.

    u: (B, d, L), h: (d, L') with L' >= L (extra taps are ignored), bias: (d,). Zero-padding to
    n >= 2L makes the circular FFT product a linear convolution; keeping the first L outputs makes
    it causal. Computed in at least fp32 (fp64 stays fp64); returned in the input dtype.
    """
    L = u.shape[-1]
    n = 1 << (2 * L - 1).bit_length()  # power of two >= 2L-1: fastest FFT size, no wrap-around
    dtype = torch.promote_types(u.dtype, torch.float32)
    with torch.autocast(device_type=u.device.type, enabled=False):
        u_hi = u.to(dtype)
        u_f = torch.fft.rfft(u_hi, n=n)  # (B, d, n/2+1)
        h_f = torch.fft.rfft(h[..., :L].to(dtype), n=n)  # (d, n/2+1)
        y = torch.fft.irfft(u_f * h_f, n=n)[..., :L]  # (B, d, L)
        if bias is not None:
            y = y + u_hi * bias.to(dtype)[:, None]
    return y.to(u.dtype)


class Sin(nn.Module):
    """sin(w x) with a trainable per-feature frequency w."""

    def __init__(self, dim: int, w: float):
        super().__init__()
        self.freq = nn.Parameter(w * torch.ones(1, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sin(self.freq * x)


def positional_embedding(L: int, emb_dim: int, max_len: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """z(t) = [t, cos(2 pi f_k n / max_len), -sin(2 pi f_k n / max_len)] for n = 0..L-1.

    Returns (t, z): t (L, 1) normalised so that n = max_len-1 maps to 1; z (L, emb_dim).
    Computed on the fly (no buffers), so a checkpoint holds only trained weights.
    """
    n = torch.arange(L, device=device, dtype=torch.float32)[:, None]  # (L, 1)
    t = n / max(max_len - 1, 1)
    bands = (emb_dim - 1) // 2
    f = torch.linspace(1e-4, bands - 1, bands, device=device)[None, :]  # (1, bands)
    angle = 2 * math.pi * f * n / max_len  # (L, bands)
    z = torch.cat([t, torch.cos(angle), -torch.sin(angle)], dim=-1)  # (L, emb_dim)
    return t, z


class HyenaFilter(nn.Module):
    """Implicit long filters: h(t) = FFN(z(t)) * exp(-|delta| t), for `n_filters` groups of d channels."""

    def __init__(self, d_model: int, n_filters: int, cfg: HyenaConfig):
        super().__init__()
        self.cfg = cfg
        self.d_model, self.n_filters = d_model, n_filters
        width = cfg.filter_order
        layers: list[nn.Module] = [nn.Linear(cfg.emb_dim, width), Sin(width, cfg.sine_freq)]
        for _ in range(cfg.filter_layers):
            layers += [nn.Linear(width, width), Sin(width, cfg.sine_freq)]
        layers.append(nn.Linear(width, d_model * n_filters, bias=False))
        self.ffn = nn.Sequential(*layers)
        # per-channel pass-through term b_i (the "bias" of the reference code)
        self.bias = nn.Parameter(torch.randn(n_filters, d_model))
        self._cache: tuple[tuple, torch.Tensor] | None = None

    def decay_rates(self, device=None) -> torch.Tensor:
        """|delta| per output channel, spread linearly from the slowest to the fastest decay."""
        c = self.cfg
        slow = math.log(c.decay_target) / c.slow_decay_pct
        fast = math.log(c.decay_target) / c.fast_decay_pct
        return torch.linspace(slow, fast, self.d_model * self.n_filters, device=device).abs()

    def _generate(self, L: int) -> torch.Tensor:
        device = self.bias.device
        t, z = positional_embedding(L, self.cfg.emb_dim, self.cfg.max_len, device=device)
        h = self.ffn(z.to(self.bias.dtype))  # (L, n_filters*d)
        if self.cfg.modulate:
            h = h * (torch.exp(-t * self.decay_rates(device)) + self.cfg.modulation_shift)
        return h.T.reshape(self.n_filters, self.d_model, L)  # (n_filters, d, L)

    def forward(self, L: int) -> torch.Tensor:
        """Filters of length L: (n_filters, d, L). Cached when gradients are off (inference)."""
        if L > self.cfg.max_len:
            raise ValueError(
                f"sequence length {L} exceeds the Hyena filter's max_len {self.cfg.max_len}; "
                "build the student with a larger hyena.max_len"
            )
        if torch.is_grad_enabled():
            self._cache = None
            return self._generate(L)
        # key on the parameters' in-place version counters so loading new weights invalidates it
        key = (L, self.bias.device, self.bias.dtype, tuple(p._version for p in self.parameters()))
        if self._cache is None or self._cache[0] != key:
            self._cache = (key, self._generate(L))
        return self._cache[1]


class HyenaOperator(nn.Module):
    """Drop-in sequence mixer: (B, L, d) -> (B, L, d), causal, sub-quadratic in L."""

    def __init__(self, d_model: int, cfg: HyenaConfig | None = None):
        super().__init__()
        cfg = cfg or HyenaConfig()
        self.cfg, self.d_model = cfg, d_model
        width = d_model * (cfg.order + 1)
        self.in_proj = nn.Linear(d_model, width)
        self.out_proj = nn.Linear(d_model, d_model)
        # depthwise causal conv over every projected channel: pad k-1 both sides, keep first L
        self.short_filter = nn.Conv1d(
            width, width, cfg.short_filter_len, padding=cfg.short_filter_len - 1, groups=width
        )
        self.filter_fn = HyenaFilter(d_model, cfg.order - 1, cfg)

    def gates(self, u: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Projections after the short conv: ([x_0, ..., x_{N-1}], v), each (B, d, L)."""
        L = u.shape[1]
        z = self.in_proj(u).transpose(1, 2)  # (B, (N+1) d, L)
        z = self.short_filter(z)[..., :L]  # causal short conv
        *x, v = z.split(self.d_model, dim=1)
        return x, v

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        L = u.shape[1]  # u: (B, L, d)
        x, v = self.gates(u)
        h = self.filter_fn(L)  # (N-1, d, L)
        bias = self.filter_fn.bias  # (N-1, d)
        for o, x_i in enumerate(reversed(x[1:])):
            v = fft_causal_conv(v * x_i, h[o], bias[o])  # (B, d, L)
        y = (v * x[0]).transpose(1, 2)  # (B, L, d)
        return self.out_proj(y)


def param_groups(
    model: nn.Module,
    lr: float,
    weight_decay: float,
    filter_lr: float | None = None,
    filter_weight_decay: float = 0.0,
) -> list[dict]:
    """AdamW groups: implicit-filter parameters get their own lr and no weight decay (as the
    reference Hyena trains them); other matrices decay; biases, norms and embeddings' 1-D
    parameters do not. Frozen parameters are left out."""
    filt, decay, no_decay = [], [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if ".filter_fn." in f".{name}":
            filt.append(p)
        elif p.ndim >= 2:
            decay.append(p)
        else:
            no_decay.append(p)
    groups = [
        {"params": decay, "lr": lr, "weight_decay": weight_decay, "name": "decay"},
        {"params": no_decay, "lr": lr, "weight_decay": 0.0, "name": "no_decay"},
        {"params": filt, "lr": filter_lr if filter_lr is not None else lr,
         "weight_decay": filter_weight_decay, "name": "filter"},
    ]
    return [g for g in groups if g["params"]]


def causality_violation(mixer: nn.Module, d_model: int, L: int = 64, batch: int = 2, seed: int = 0) -> float:
    """Largest |d y[t] / d u[s]| over all s > t (must be exactly 0 for a causal mixer)."""
    g = torch.Generator().manual_seed(seed)
    param = next(mixer.parameters())
    u = torch.randn(batch, L, d_model, generator=g).to(param).requires_grad_(True)
    y = mixer(u)
    worst = 0.0
    for t in range(L):
        (grad,) = torch.autograd.grad(y[:, t].sum(), u, retain_graph=True)
        if t + 1 < L:
            worst = max(worst, grad[:, t + 1 :].abs().max().item())
    return worst
