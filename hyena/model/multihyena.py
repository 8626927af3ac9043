"""MultiHyena (Laughing Hyena, arXiv 2310.18780, section 4): one long filter per head, shared by
the head's N x N channels. For head m of size N with queries q, keys k and values v:

    z^m_t = k^m_t (v^m_t)^T        (N x N channels)
    w^m   = h^m * z^m              (one causal long filter per head, "*" over time)
    y^m_t = (q^m_t)^T w^m_t        i.e.  y_t = sum_{s<=t} h^m[t-s] (q_t . k_s) v_s

This is linear attention whose softmax is replaced by a learned causal decay kernel T_h[t, s] =
h[t-s]: the form closest to the teacher's attention that a long convolution can take, so the
teacher's W_q, W_k, W_v, W_o map onto it head for head (`init_from_attention`). Grouped-query
attention maps too: a key/value head serves `heads // kv_heads` query heads, each with its own
filter. There is no rotary embedding: the filter carries position.

As in the Hyena operator (hyena/operator.py) the projections go through a causal depthwise short
conv (q, k and v alike) and h is the implicit filter `HyenaFilter` (sine FFN of a positional
embedding times an exponential window, `decay_len` included) with one channel per head; its
per-head pass-through b adds b (q_t . k_t) v_t, i.e. h[0] + b on the diagonal.

Three ways to compute the mix, chosen by length and by the filters' support (`mix`; measured on
CPU in BENCHMARKS.md, "MultiHyena"):

- masked quadratic, Y = ((Q K^T) o T_h) V, in query blocks: O(L^2 N) per head, all in large
  matmuls, and a backward that autograd handles with small memory. Distillation runs at 512
  tokens, where it takes 1.5 s forward and backward at B=8 against the Hyena mixer's 1.2 s;
- banded: the same over only the keys within the filters' support. The implicit filters decay
  exponentially (`decay_len`: 256 tokens by default), so every tap past ~1.2K is below 1e-7 of
  its head's peak, i.e. below fp32 resolution of the output (`filter_support`, TAIL_TOL):
  O(L W N) per head, linear in L. "auto" takes it once the support is at most half the length
  (16K: 10x faster than the plain quadratic; 64K: 28-53 s, where the quadratic runs past 7 min);
- FFT over the N^2 channels of k (x) v: O(N^2 L log L) per head, but 4,096 channels per head:
  14x slower than the quadratic at 512 and 2x slower than the banded form at 64K, with 5x its
  memory. "auto" uses it only for long sequences whose filters do not die out (decay_len 0).
  One key/value head at a time, value columns in blocks, so memory stays bounded; the spectra
  of k (x) v are shared by the query heads of a GQA group.

A chunked form with a carried state needs h as a sum of exponentials: that is the recurrent
student's job (`hyena.recurrence`), not this module's.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from hyena.model.operator import (
    HyenaConfig,
    HyenaFilter,
    causal_depthwise_conv,
    fft_dtype,
    fft_size,
    positional_embedding,
    project_channel_major,
)
from hyena.teachers import attention_projections

QUADRATIC_MAX_LEN = 4096  # "auto" uses the masked quadratic form up to this length (BENCHMARKS.md)
BLOCK_ELEMENTS = 1 << 24  # scores per query block, (B, H, block, keys): ~64 MB in fp32
FFT_ELEMENTS = 1 << 27  # spectrum entries per key/value-column block of the FFT form (~1 GB complex64)
ENVELOPE_RIDGE = 1e-12  # of fit_filter_envelope's solve, relative to the Gram diagonal's mean
TAIL_TOL = 1e-7  # filter taps below this fraction of a head's largest are treated as zero (fp32 eps ~1.2e-7)


def head_layout(d_model: int, heads: int, kv_heads: int) -> int:
    """The head size N for `heads` query heads over d_model channels and `kv_heads` key/value
    heads; a one-line error when they do not fit together."""
    if heads < 1 or d_model % heads:
        raise ValueError(f"student.heads = {heads} must be >= 1 and divide the model width {d_model}")
    if kv_heads < 1 or heads % kv_heads:
        raise ValueError(f"student.kv_heads = {kv_heads} must be >= 1 and divide student.heads = {heads}")
    return d_model // heads


# ----------------------------------------------------------------------------------------------
# The mix, y_t = sum_{s<=t} h[t-s] (q_t . k_s) v_s, in two exact forms
# ----------------------------------------------------------------------------------------------


def reversed_decay(h: torch.Tensor, row0: int, rows: int, keys: int) -> torch.Tensor:
    """T_h for query rows row0..row0+rows-1 against the keys keys-1, ..., 0 in REVERSED order:
    D[m, i, j] = h[m, row0 + i - (keys-1-j)], 0 where that lag is negative. (H, rows, keys), a
    Hankel matrix (the index grows with i + j), so it is a strided view of one zero-padded copy
    of h: no gather, no (H, rows, keys) allocation. h (H, L') with L' >= keys >= row0 + rows."""
    H = h.shape[0]
    padded = torch.cat([h.new_zeros(H, keys), h[:, :keys]], dim=1)  # padded[keys + x] = h[x]
    return padded.as_strided((H, rows, keys), (padded.stride(0), 1, 1), padded.storage_offset() + row0 + 1)


def mix_quadratic(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, h: torch.Tensor,
                  start: int = 0, block: int | None = None, window: int | None = None) -> torch.Tensor:
    """((Q K^T) o T_h) V in query blocks. q (B, H, T, N) are the queries of positions
    start..start+T-1; k, v (B, G, start+T, N) the keys/values of positions 0..start+T-1, G key/value
    heads each shared by H/G query heads; h (H, >= start+T) the filters with the pass-through in
    h[:, 0]; window: taps of h that can be non-zero (None: all), so a query block reads only the
    keys within `window` of it (banded: O(L window N) instead of O(L^2 N)). Returns (B, H, T, N).

    Keys and values enter in reversed time order, which turns the Toeplitz T_h into a Hankel
    matrix, a strided view of h (`reversed_decay`): building T_h by gathering cost more than both
    matmuls at 4K tokens. Blocks keep the scores under BLOCK_ELEMENTS."""
    B, H, T, N = q.shape
    G = k.shape[1]
    qg = q.view(B, G, H // G, T, N)  # a GQA group's query heads share one key/value head
    if block is None:  # keys per block: all so far, or at most the window plus the block itself
        keys = start + T if window is None else min(start + T, 2 * window)
        block = max(64, BLOCK_ELEMENTS // max(B * H * keys, 1))
        block = block if window is None else min(block, max(64, window // 4))  # keys read: window + block
    outs = []
    for t0 in range(0, T, block):
        t1 = min(T, t0 + block)
        end = start + t1  # keys this block may see: first .. end-1
        first = 0 if window is None else max(0, start + t0 - window + 1)
        k_rev, v_rev = (t[:, :, None, first:end].flip(-2) for t in (k, v))  # (B, G, 1, S, N)
        decay = reversed_decay(h.to(q.dtype), start + t0, t1 - t0, end)[..., : end - first]
        scores = (qg[..., t0:t1, :] @ k_rev.mT) * decay.view(G, H // G, t1 - t0, end - first)  # (B, G, g, R, S)
        outs.append(scores @ v_rev)  # (B, G, g, R, N)
    return torch.cat(outs, dim=-2).view(B, H, T, N)


def filter_support(h: torch.Tensor, tol: float = TAIL_TOL) -> int:
    """Taps up to the last one where any head's |h| exceeds tol x its largest |h|: past it the
    filters are below fp32 resolution of the output (decaying windows, `decay_len`), and the
    banded form skips those keys. h (H, L) -> 1..L."""
    a = h.detach().abs()
    big = (a > tol * a.amax(dim=1, keepdim=True)).any(dim=0).nonzero()
    return int(big[-1]) + 1 if len(big) else 1


def mix_fft(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """The same mix as a long convolution of the N^2 channels k_s[i] v_s[j] with each head's
    filter, by FFT: w_t = sum_s h[t-s] k_s v_s^T, y_t = q_t^T w_t. q (B, H, L, N), k and v
    (B, G, L, N), h (H, >= L) pass-through in h[:, 0]. Loops over key/value heads, and over blocks
    of value columns so that a (B, N, cols, n/2+1) spectrum stays under FFT_ELEMENTS; each
    spectrum of k (x) v serves every query head of its group. Runs in >= fp32."""
    B, H, L, N = q.shape
    G, g = k.shape[1], H // k.shape[1]
    n, fdt = fft_size(L), fft_dtype(q.dtype)
    with torch.autocast(device_type=q.device.type, enabled=False):
        spectra = torch.fft.rfft(h[:, :L].to(fdt), n=n)  # (H, n/2+1)
        cols = max(1, min(N, FFT_ELEMENTS // max(B * N * (n // 2 + 1), 1)))
        out = q.new_zeros(B, H, L, N, dtype=fdt)
        for j in range(G):
            kj = k[:, j].mT.to(fdt)  # (B, N, L)
            for c0 in range(0, N, cols):
                vj = v[:, j, :, c0:c0 + cols].mT.to(fdt)  # (B, c, L)
                z = torch.fft.rfft(kj[:, :, None] * vj[:, None], n=n)  # (B, N, c, n/2+1)
                for m in range(j * g, (j + 1) * g):
                    w = torch.fft.irfft(z * spectra[m], n=n)[..., :L]  # (B, N, c, L)
                    out[:, m, :, c0:c0 + cols] = torch.einsum("bli,bicl->blc", q[:, m].to(fdt), w)
    return out.to(q.dtype)


def mix(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, h: torch.Tensor, path: str = "auto") -> torch.Tensor:
    """y_t = sum_{s<=t} h[t-s] (q_t . k_s) v_s for every head: (B, H, L, N). path: "quadratic",
    "fft", "banded" (quadratic over the filters' support only, `filter_support`) or "auto":
    banded when the filters die out within half the sequence (decaying windows), else quadratic
    up to QUADRATIC_MAX_LEN tokens and FFT beyond."""
    L = q.shape[2]
    support = filter_support(h[:, :L]) if path in ("auto", "banded") else L
    if path == "auto":
        path = "banded" if 2 * support <= L else "quadratic" if L <= QUADRATIC_MAX_LEN else "fft"
    if path == "quadratic":
        return mix_quadratic(q, k, v, h)
    if path == "banded":
        return mix_quadratic(q, k, v, h, window=support)
    if path == "fft":
        return mix_fft(q, k, v, h)
    raise ValueError(f"MultiHyena path must be auto, quadratic, banded or fft (got {path!r})")


def mix_loop(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """The definition, one output at a time (tests only): (B, H, L, N)."""
    B, H, L, N = q.shape
    g = H // k.shape[1]
    y = torch.zeros_like(q)
    for m in range(H):
        for t in range(L):
            for s in range(t + 1):
                dot = (q[:, m, t] * k[:, m // g, s]).sum(-1, keepdim=True)  # (B, 1)
                y[:, m, t] += h[m, t - s] * dot * v[:, m // g, s]
    return y


# ----------------------------------------------------------------------------------------------
# The operator
# ----------------------------------------------------------------------------------------------


class MultiHyenaOperator(nn.Module):
    """Sequence mixer (B, L, d) -> (B, L, d): projections q | k | v, the short conv, the per-head
    long-filter mix, the output projection over the concatenated heads.

    `path` picks the computation ("auto" by length, see `mix`). `features(u)` (B, d_heads, L) is
    everything before the output projection, the same contract as `HyenaOperator.features`, so the
    least-squares readout (`distill.readout`) solves this mixer's W_o unchanged.
    """

    def __init__(self, d_model: int, heads: int, kv_heads: int | None = None, cfg: HyenaConfig | None = None,
                 path: str = "auto"):
        super().__init__()
        cfg = cfg or HyenaConfig()
        kv_heads = kv_heads or heads
        self.head_dim = head_layout(d_model, heads, kv_heads)
        self.cfg, self.d_model, self.heads, self.kv_heads, self.path = cfg, d_model, heads, kv_heads, path
        self.d_kv = kv_heads * self.head_dim
        width = d_model + 2 * self.d_kv  # q | k | v
        self.in_proj = nn.Linear(d_model, width)
        self.short_filter = nn.Conv1d(width, width, cfg.short_filter_len, padding=cfg.short_filter_len - 1,
                                      groups=width)
        self.filter_fn = HyenaFilter(heads, 1, cfg)  # one channel per head: h (1, H, L), pass-through (1, H)
        self.out_proj = nn.Linear(d_model, d_model)

    def filters(self, L: int) -> torch.Tensor:
        """Each head's causal filter with its pass-through folded into tap 0: (H, L)."""
        h = self.filter_fn(L)[0]  # (H, L)
        return torch.cat([h[:, :1] + self.filter_fn.bias[0][:, None], h[:, 1:]], dim=1)

    def projections(self, u: torch.Tensor) -> torch.Tensor:
        """W_in u + b_in through the short conv, channel-major: (B, L, d) -> (B, d + 2 d_kv, L)."""
        return causal_depthwise_conv(project_channel_major(self.in_proj, u), self.short_filter)

    def split_heads(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, d + 2 d_kv, L) -> q (B, H, L, N), k and v (B, G, L, N) (views, no copies)."""
        B, _, L = z.shape
        q, k, v = z.split([self.d_model, self.d_kv, self.d_kv], dim=1)
        return (q.view(B, self.heads, self.head_dim, L).mT, k.view(B, self.kv_heads, self.head_dim, L).mT,
                v.view(B, self.kv_heads, self.head_dim, L).mT)

    def check_len(self, L: int) -> None:
        """A one-line error for lengths the implicit filters cannot make (past max_len)."""
        self.filter_fn._check_len(L)

    def mixed(self, u: torch.Tensor) -> torch.Tensor:
        """The heads' outputs concatenated, before W_o: (B, L, d) -> (B, L, d)."""
        B, L, _ = u.shape
        self.check_len(L)
        q, k, v = self.split_heads(self.projections(u))
        y = mix(q, k, v, self.filters(L), self.path)  # (B, H, L, N)
        return y.transpose(1, 2).reshape(B, L, self.d_model)

    def features(self, u: torch.Tensor) -> torch.Tensor:
        """`mixed` channel-major, (B, d, L): what the least-squares readout regresses on."""
        return self.mixed(u).mT

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        return self.out_proj(self.mixed(u))  # (B, L, d)

    @torch.no_grad()
    def fit_filter_envelope(self, L: int | None = None) -> float:
        """Set the filter FFN's last layer by least squares so that FFN(z(t)) ~ 1 over the first L
        taps (default: max_len; 4 x decay_len when set), leaving h^m[t] ~ exp(-|delta_m| t): each head an
        exponentially decaying average, slow to fast across heads, the closed-form probe's "fixed
        decays". Why: a random FFN starts the filters with random signs, and linear attention with
        a sign-flipping kernel mixes nothing useful; this gives the teacher-initialised mixer a
        sensible kernel to start training from. Returns the relative RMS error of the fit."""
        c = self.cfg
        L = L or min(c.max_len, 4 * c.decay_len if c.decay_len else c.max_len)
        _, z = positional_embedding(L, c.emb_dim, c.max_len, device=self.filter_fn.bias.device)
        hidden = self.filter_fn.ffn[:-1](z.to(self.filter_fn.bias.dtype)).double()  # (L, F)
        ones = torch.ones(L, 1, dtype=hidden.dtype, device=hidden.device)
        # Normal equations with a tiny ridge, not lstsq: the sine features are ill-conditioned
        # (cond ~1e8), so many w fit to ~3e-8, and CPU lstsq (MKL's gelsy) picked a different one
        # from run to run with the memory layout: two fresh `dvc repro` gave students that differed
        # from the first layer on. solve() on the Gram matrix gives the same bits every time.
        gram = hidden.T @ hidden  # (F, F)
        gram += ENVELOPE_RIDGE * gram.diagonal().mean() * torch.eye(len(gram), dtype=gram.dtype, device=gram.device)
        w = torch.linalg.solve(gram, hidden.T @ ones)  # (F, 1)
        last = self.filter_fn.ffn[-1].weight  # (H, F)
        last.copy_(w.T.expand_as(last).to(last.dtype))
        self.filter_fn.bias.zero_()
        return ((hidden @ w - 1).norm() / math.sqrt(L)).item()


# ----------------------------------------------------------------------------------------------
# Initialisation from the teacher's attention
# ----------------------------------------------------------------------------------------------


def teacher_heads(config) -> tuple[int, int]:
    """(query heads, key/value heads) of a teacher config, for any supported family (GPT-2 and
    GPT-NeoX have no GQA: as many key/value heads as query heads)."""
    heads = config.num_attention_heads
    return heads, getattr(config, "num_key_value_heads", None) or heads


@torch.no_grad()
def init_from_attention(mixer: MultiHyenaOperator, attention: nn.Module, teacher_config) -> None:
    """Make the mixer the teacher's attention with softmax(q k^T / sqrt(N)) replaced by T_h:

        q <- W_Q / sqrt(N)   (the softmax temperature, folded in: the mixer has no scale of its own)
        k <- W_K, v <- W_V   (one row block per key/value head: GQA maps head for head)
        W_o <- W_O           (biases copied where the teacher has them, zero elsewhere)

    The short conv becomes the identity (so q, k, v ARE the teacher's, without rotary), and the
    filters get a smooth decaying envelope (`fit_filter_envelope`) instead of random signs.
    Every family goes through `attention_projections` (GPT-NeoX's interleaved and GPT-2's fused
    c_attn de-fused there); it widens K/V to one block per query head, and the first query head
    of each group gives back the key/value head. Qwen3's per-head q/k RMSNorm is not linear:
    only its scale is folded in (as for the Hyena mixer), so that family is close, not exact."""
    heads, kv_heads = teacher_heads(teacher_config)
    if (mixer.heads, mixer.kv_heads, mixer.d_model) != (heads, kv_heads, teacher_config.hidden_size):
        raise ValueError(f"student heads {mixer.heads}/{mixer.kv_heads} differ from the teacher's {heads}/{kv_heads}: "
                         "init teacher_attention needs student.heads and kv_heads at 0 (the teacher's); or use init random")
    p = attention_projections(attention, teacher_config)
    N, g = mixer.head_dim, heads // kv_heads

    def narrow(t: torch.Tensor | None) -> torch.Tensor | None:  # (H N, ...) -> (G N, ...): one block per group
        return None if t is None else t.view(heads, N, *t.shape[1:])[::g].reshape(kv_heads * N, *t.shape[1:])

    scale = N ** -0.5
    blocks = [(p.q_weight * scale, None if p.q_bias is None else p.q_bias * scale),
              (narrow(p.k_weight), narrow(p.k_bias)), (narrow(p.v_weight), narrow(p.v_bias))]
    rows = 0
    for weight, bias in blocks:
        sl = slice(rows, rows + weight.shape[0])
        mixer.in_proj.weight[sl].copy_(weight)
        mixer.in_proj.bias[sl].copy_(bias) if bias is not None else mixer.in_proj.bias[sl].zero_()
        rows += weight.shape[0]
    mixer.out_proj.weight.copy_(p.o_weight)
    mixer.out_proj.bias.copy_(p.o_bias) if p.o_bias is not None else mixer.out_proj.bias.zero_()
    mixer.short_filter.weight.zero_()
    mixer.short_filter.weight[..., -1] = 1.0  # the last tap multiplies the current input
    mixer.short_filter.bias.zero_()
    mixer.fit_filter_envelope()
