"""The Hyena operator (Poli et al. 2023, arXiv 2302.10866), as one self-contained module.

For an input u of shape (B, L, d) and order N (the reference code's "order": N gates, N-1 long
filters):

    x_0, ..., x_{N-1}, v = split(shortconv(W_in u + b_in))      each (B, d, L)
    for i = N-1 .. 1:   v = h_i * (x_i v) + b_i (x_i v)        "*" = causal convolution over L
    y = W_out (x_0 v) + b_out

`shortconv` is a depthwise causal FIR filter of `short_filter_len` taps over every projected
channel: s[c, t] = beta_c + sum_{k=0}^{K-1} w[c, k] z[c, t - (K-1) + k], with z[c, t<0] = 0.

The long filters h_i are *implicit*: a small FFN of a positional embedding z(t) with sine
activations, multiplied by an exponentially decaying window. They are generated for any length
L <= max_len, so parameters do not grow with context; tap n does not depend on L, so a filter
generated for L is a prefix of the one generated for any longer length.

The long convolution runs by FFT in O(L log L) (`hyena.model.fftconv`, which also holds the
gated chain of long convolutions and the short depthwise convolution with their backward passes).

At inference (no gradient needed) the filters and their responses are cached per module and reused
until any filter parameter changes value (checked by comparing against a snapshot, so
`load_state_dict`, optimiser steps, `.data` writes and `assign=True` all invalidate it).

`causality_violation` is a built-in check: the gradient of output t with respect to any input
position > t must be exactly zero.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
from transformers import initialization as hf_init

from hyena.core.config import Config, param
from hyena.model.fftconv import (
    causal_depthwise_conv,
    fft_dtype,
    fft_size,
    gated_long_conv,
    project_channel_major,
)


@dataclass
class HyenaConfig(Config):
    """params.yaml `student.hyena`: the Hyena operator's settings (reference `standalone_hyena.py`
    defaults, except emb_dim 33 from the Pile config and max_len 8192)."""
    SECTION = "student.hyena"

    order: int = param(2, "gates in the chain; order-1 long filters (2: one long filter, as the paper)", ge=2)
    filter_order: int = param(64, "hidden width of the implicit filter FFN", ge=1)
    filter_layers: int = param(2, "hidden [Linear -> Sin] blocks of the filter FFN", ge=0)
    emb_dim: int = param(33, "positional embedding: t plus (emb_dim-1)/2 (cos, -sin) bands; odd, >= 3", ge=3)
    short_filter_len: int = param(3, "causal depthwise short conv", ge=1)
    max_len: int = param(8192, "longest sequence the student accepts; also the time scale of the filters' positional embedding", ge=2)
    sine_freq: float = param(1.0, "filter FFN's initial sine frequency (1: reference default, smooth filters that 16 modes fit; 14: Pile config, noise-like)")
    modulate: bool = param(True, "exponential decay window on the filters")
    decay_len: int = param(0, "tokens that t = 1 stands for in the decay window (0: max_len, the reference). "
                              "Set it to about the fitted window / slow_decay_pct, so that taps never fitted carry "
                              "almost no weight and the student holds up past its training length", ge=0)
    fast_decay_pct: float = param(0.3, "the fastest channel decays to decay_target at t = fast_decay_pct (x decay_len tokens)", gt=0)
    slow_decay_pct: float = param(1.5, "the slowest channel decays to decay_target at t = slow_decay_pct (x decay_len tokens)", gt=0)
    decay_target: float = param(1e-2, "window value the decays aim at", gt=0)
    modulation_shift: float = param(0.0, "constant added to the decay window")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.emb_dim % 2 == 0:
            raise ValueError(f"student.hyena.emb_dim must be odd (t plus cos/sin pairs), got {self.emb_dim}")

    def to_dict(self) -> dict:
        return asdict(self)


# ----------------------------------------------------------------------------------------------
# Long causal convolution by FFT
# ----------------------------------------------------------------------------------------------


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
    """Implicit long filters: h(t) = FFN(z(t)) * (exp(-|delta_c| t) + shift), for `n_filters`
    groups of d channels.

    When no filter parameter needs a gradient (inference, or a frozen layer) the generated filters
    and their spectra are cached. The cache remembers a snapshot of every filter parameter and is
    dropped as soon as any of them differs in value, device or dtype; it holds the longest filter
    generated so far (shorter requests are prefixes of it) and the latest frequency response.
    """
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
        self._cache: dict | None = None

    def decay_rates(self, device=None) -> torch.Tensor:
        """|delta| per output channel, spread linearly from the slowest to the fastest decay."""
        c = self.cfg
        slow = math.log(c.decay_target) / c.slow_decay_pct
        fast = math.log(c.decay_target) / c.fast_decay_pct
        return torch.linspace(slow, fast, self.d_model * self.n_filters, device=device).abs()

    def decay_time(self, t: torch.Tensor) -> torch.Tensor:
        """The decay window's clock: t (normalised to max_len) or, with `decay_len`, absolute
        tokens / decay_len. Why: with t in fractions of max_len (8,192) the slowest channel keeps
        1% of its weight at 12K tokens, so a student fitted on 512-token windows convolves,
        further out, over taps its readouts never saw and collapses; a window in absolute tokens
        keeps every long tap near zero whatever max_len is."""
        if not self.cfg.decay_len:
            return t
        return t * (max(self.cfg.max_len - 1, 1) / self.cfg.decay_len)  # = n / decay_len

    def _generate(self, L: int) -> torch.Tensor:
        """Filters of length L, (n_filters, d, L), computed straight in channel-major layout."""
        device = self.bias.device
        t, z = positional_embedding(L, self.cfg.emb_dim, self.cfg.max_len, device=device)
        hidden = self.ffn[:-1](z.to(self.bias.dtype))  # (L, filter_order)
        h = torch.matmul(self.ffn[-1].weight, hidden.mT)  # (n_filters*d, L), no transpose copy
        if self.cfg.modulate:
            window = torch.exp(-self.decay_rates(device)[:, None] * self.decay_time(t).mT)  # (n_filters*d, L)
            h = h * (window + self.cfg.modulation_shift).to(h.dtype)
        return h.view(self.n_filters, self.d_model, L)  # (n_filters, d, L)

    def _check_len(self, L: int) -> None:
        if L > self.cfg.max_len:
            raise ValueError(
                f"sequence length {L} exceeds the Hyena filter's max_len {self.cfg.max_len}; "
                "build the student with a larger hyena.max_len"
            )
        if L < 1:
            raise ValueError(f"sequence length must be >= 1 (got {L})")

    def clear_cache(self) -> None:
        """Drop the cached filters and frequency response (they are also dropped automatically whenever a
        parameter changes; this only frees memory or forces regeneration, e.g. in benchmarks)."""
        self._cache = None

    def _cacheable(self) -> bool:
        return not (torch.is_grad_enabled() and any(p.requires_grad for p in self.parameters()))

    def _valid_cache(self) -> dict:
        """The cache if every parameter still equals its snapshot, else a fresh empty one."""
        params = [p.detach() for p in self.parameters()]
        c = self._cache
        if c is not None and len(c["params"]) == len(params) and all(
            s.device == p.device and s.dtype == p.dtype and s.shape == p.shape and torch.equal(s, p)
            for s, p in zip(c["params"], params, strict=True)
        ):
            return c
        self._cache = {"params": [p.clone() for p in params], "filter": None, "response": None}
        return self._cache

    def forward(self, L: int) -> torch.Tensor:
        """Filters of length L: (n_filters, d, L). Cached when no gradient is needed."""
        self._check_len(L)
        if not self._cacheable():
            self._cache = None  # training: parameters move every step, free the memory
            return self._generate(L)
        with torch.no_grad():
            cache = self._valid_cache()
            if cache["filter"] is None or cache["filter"].shape[-1] < L:
                cache["filter"] = self._generate(L)
            return cache["filter"][..., :L]

    def response(self, L: int, n: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Frequency response of each long-conv step, filter plus pass-through:
        H = rfft(h[..., :L] + b delta, n) = rfft(h[..., :L], n) + b, since the pass-through
        b u[t] is a convolution with b delta[t]. (n_filters, d, n//2+1), complex, from `dtype`
        (a real dtype, at least fp32). Folding b in saves a full pass over (B, d, L)."""
        if not self._cacheable():
            return self._response(self(L), n, dtype)
        with torch.no_grad():
            h = self(L)  # validates (or refills) the cache first
            cache = self._cache
            key = (L, n, dtype)
            if cache["response"] is None or cache["response"][0] != key:
                cache["response"] = (key, self._response(h, n, dtype))
            return cache["response"][1]

    def _response(self, h: torch.Tensor, n: int, dtype: torch.dtype) -> torch.Tensor:
        with torch.autocast(device_type=h.device.type, enabled=False):
            return torch.fft.rfft(h.to(dtype), n=n) + self.bias.to(dtype)[..., None]


# ----------------------------------------------------------------------------------------------
# The operator
# ----------------------------------------------------------------------------------------------


class HyenaOperator(nn.Module):
    """Drop-in sequence mixer: (B, L, d) -> (B, L, d), causal, sub-quadratic in L.

    Internally everything between the two projections runs channel-major, (B, C, L), so that the
    short conv and the FFT both work along the contiguous last axis; the projections read and
    write that layout through BLAS transposes instead of copies.
    """
    def __init__(self, d_model: int, cfg: HyenaConfig | None = None):
        super().__init__()
        cfg = cfg or HyenaConfig()
        self.cfg, self.d_model = cfg, d_model
        width = d_model * (cfg.order + 1)
        self.in_proj = nn.Linear(d_model, width)
        self.out_proj = nn.Linear(d_model, d_model)
        # depthwise causal conv over every projected channel. Kept as an nn.Conv1d (weights,
        # checkpoints, `short_filter(z)[..., :L]` all still work: it pads k-1 on both sides) but
        # evaluated by `causal_depthwise_conv`, which is faster on CPU.
        self.short_filter = nn.Conv1d(
            width, width, cfg.short_filter_len, padding=cfg.short_filter_len - 1, groups=width
        )
        self.filter_fn = HyenaFilter(d_model, cfg.order - 1, cfg)

    def project_in(self, u: torch.Tensor) -> torch.Tensor:
        """W_in u + b_in, written channel-major: (B, L, d) -> (B, (N+1) d, L)."""
        return project_channel_major(self.in_proj, u)

    def gates(self, u: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Projections after the short conv: ([x_0, ..., x_{N-1}], v), each (B, d, L)."""
        z = causal_depthwise_conv(self.project_in(u), self.short_filter)  # (B, (N+1) d, L)
        *x, v = z.split(self.d_model, dim=1)
        return x, v

    def features(self, u: torch.Tensor) -> torch.Tensor:
        """Everything before the output projection: x_0 * (h * ...), (B, L, d) -> (B, d, L)."""
        L = u.shape[1]  # u: (B, L, d)
        self.filter_fn._check_len(L)
        x, v = self.gates(u)  # each (B, d, L)
        filt = self.filter_fn
        # inference or frozen filters: the cached filters and spectra (H = rfft(h) + b)
        H = filt.response(L, fft_size(L), fft_dtype(u.dtype)) if filt._cacheable() else None
        return gated_long_conv(x, v, filt(L), filt.bias, H)  # (B, d, L)

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        return self.out_proj(self.features(u).mT)  # (B, L, d)


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


@torch.no_grad()
def reset_hyena_parameters(root: nn.Module, sine_freq: float) -> None:
    """The reference Hyena initialisation of every module under `root`: PyTorch defaults for the
    projections, the short conv and the filter FFN, N(0, 1) pass-through biases, sine frequency
    `sine_freq`.

    Uses the torch.nn.init primitives (through transformers.initialization), so inside
    `PreTrainedModel.initialize_weights`, which guards them, parameters already loaded from a
    checkpoint are left untouched."""
    for module in root.modules():
        if isinstance(module, (nn.Linear, nn.Conv1d)):
            module.reset_parameters()
        elif isinstance(module, Sin):
            hf_init.constant_(module.freq, sine_freq)
        elif isinstance(module, HyenaFilter):
            hf_init.normal_(module.bias, 0.0, 1.0)
