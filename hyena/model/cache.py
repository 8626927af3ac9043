"""Decoding caches of the Hyena students: one state object per decoder layer in a transformers Cache.

A decoder layer hands the cache to its mixer (under `TeacherAdapter.cache_kwarg`: `cache`, or
`layer_past` for GPT-NeoX); each mixer reads `cache.layers[layer_idx]`. Three kinds of layer state:

- "hyena", `HyenaConvState` (convolutional student): the short conv's last k-1 projected inputs
  and every long filter's past inputs w (the gated v x_i), newest first, so that the output at a
  new position t is one dot product per channel with the filter's first t+1 taps:
  O(L d) per layer per token instead of re-running the whole model over the prefix.
- "modal", `ModalLayerState` (recurrent student): the FIR state and the modal state, O(1).
- "attention", transformers' `DynamicLayer`: a KV cache, for decoder layers that kept the
  teacher's attention (hybrid students).
- "multihyena", `MultiHyenaKVState`: a MultiHyena mixer's past keys and values (exact, O(L) a
  token; hyena/model/multihyena_mixer.py).
- "multihyena_modal", `MultiHyenaModalState`: the modal MultiHyena mixer's matrix state per head
  and mode (O(1); hyena/recurrence/multihyena.py).

`MixerCache.for_kinds(["hyena", "attention", ...])` builds the cache from one kind per layer.

Left-padded batches: for the duration of one forward, `MixerCache.set_input_mask` tells every
Hyena state which positions of the chunk are real tokens, and the mixers zero their projected
inputs at pads twice, before the short conv (its taps then see zeros, as a fresh conv does)
and after it (its bias would make a pad's gates non-zero). With zero inputs at pads, every
linear state (FIR taps, long-filter inputs, modal state) is exactly the state of the unpadded
prompt: the long filters are relative in time, so a zero-input prefix is no prefix at all.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from transformers.cache_utils import Cache, CacheLayerMixin, DynamicLayer

from hyena.model.fftconv import (
    causal_depthwise_conv,
    fft_causal_conv,
    fft_dtype,
    fft_size,
    gated_long_conv_inputs,
)
from hyena.model.operator import HyenaOperator


class MixerLayerState(CacheLayerMixin):
    """What a Hyena mixer's state shares: no keys/values, a token count, a fixed per-step cost."""
    is_sliding = False
    is_compileable = False
    is_croppable = False
    supports_early_init = False

    def __init__(self):
        super().__init__()
        self.seen = 0  # tokens absorbed so far (left pads included)
        self.input_mask: torch.Tensor | None = None  # (B, T) of the chunk being absorbed: 1 real, 0 pad; None all real

    def lazy_initialization(self, key_states, value_states) -> None:
        raise TypeError("a Hyena layer keeps a convolution/recurrent state, not keys/values")

    def update(self, key_states, value_states, *args, **kwargs):
        raise TypeError("a Hyena layer keeps a convolution/recurrent state, not keys/values")

    def get_seq_length(self) -> int:
        return self.seen

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.seen + query_length, 0  # as a KV cache of `seen` positions would report

    def get_max_length(self) -> int:
        return -1

    def _tensors(self) -> list[torch.Tensor]:
        raise NotImplementedError

    def nbytes(self) -> int:
        """Bytes held (all sequences of the batch)."""
        return sum(t.numel() * t.element_size() for t in self._tensors() if t is not None)


class ModalLayerState(MixerLayerState):
    """The recurrent student's layer state: FIR state (B, W, k-1) and modal state (B, order-1, d, N) complex."""
    def __init__(self):
        super().__init__()
        self.fir: torch.Tensor | None = None
        self.modal: torch.Tensor | None = None

    def reset(self) -> None:
        self.fir, self.modal, self.seen = None, None, 0

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        if self.fir is not None:
            self.fir = self.fir.index_select(0, beam_idx.to(self.fir.device))
            self.modal = self.modal.index_select(0, beam_idx.to(self.modal.device))

    def _tensors(self) -> list[torch.Tensor]:
        return [self.fir, self.modal]


class HyenaConvState(MixerLayerState):
    """The convolutional student's layer state.

    fir: the short conv's last k-1 projected inputs (B, W, k-1). history: each long filter's past
    inputs (F, d, B, capacity), newest LAST-written at the lowest index: position j of the sequence
    sits at capacity-1-j, so positions t..0 are one contiguous run that lines up with taps 0..t
    of the filter. filters / bias: the mixer's filters (F, d, >= capacity) and pass-through (F, d),
    taken when the history is (re)allocated, so decoding never regenerates them.
    """
    GROW = 2  # capacity multiplier when the history is full (at most the filters' max_len)
    DOT_BLOCK = 2048  # time steps multiplied at once in a decode step's dot products

    def __init__(self):
        super().__init__()
        self.fir: torch.Tensor | None = None
        self.history: torch.Tensor | None = None
        self.filters: torch.Tensor | None = None
        self.bias: torch.Tensor | None = None

    def reset(self) -> None:
        self.fir = self.history = self.filters = self.bias = None
        self.seen = 0

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        if self.fir is not None:
            self.fir = self.fir.index_select(0, beam_idx.to(self.fir.device))
            self.history = self.history.index_select(2, beam_idx.to(self.history.device))

    def _tensors(self) -> list[torch.Tensor]:
        return [self.fir, self.history]

    def held_bytes(self) -> int:
        """Bytes of the positions absorbed so far (the history's used part plus the FIR state)."""
        if self.history is None:
            return 0
        F_, d, B, _ = self.history.shape
        return F_ * d * B * self.seen * self.history.element_size() + self.fir.numel() * self.fir.element_size()

    def reserve(self, op: HyenaOperator, total: int, like: torch.Tensor) -> None:
        """Make room for `total` positions (keeping those held) and take op's filters that long."""
        cap = 0 if self.history is None else self.history.shape[-1]
        if total <= cap:
            return
        max_len = op.cfg.max_len
        if total > max_len:
            raise ValueError(f"sequence length {total} exceeds the Hyena filter's max_len {max_len}; "
                             "build the student with a larger hyena.max_len")
        new_cap = min(max_len, max(total, self.GROW * cap, 64))
        F_, d, B = op.cfg.order - 1, op.d_model, like.shape[0]
        grown = like.new_empty(F_, d, B, new_cap)
        if self.seen:
            grown[..., new_cap - self.seen:] = self.history[..., cap - self.seen:]
        self.history = grown
        with torch.no_grad():
            self.filters = op.filter_fn(new_cap).to(like.dtype)  # (F, d, new_cap), cached by the filter
            self.bias = op.filter_fn.bias.detach().to(like.dtype)  # (F, d)

    def write(self, o: int, w: torch.Tensor, start: int) -> None:
        """Store filter o's inputs w (B, d, T) for positions start .. start+T-1."""
        cap, T = self.history.shape[-1], w.shape[-1]
        end = cap - start  # position start goes to index end-1, start+T-1 to end-T
        self.history[o, :, :, end - T:end] = w.permute(1, 0, 2).flip(-1)

    def inputs(self, o: int, n: int) -> torch.Tensor:
        """Filter o's inputs at positions 0 .. n-1, in time order: (B, d, n)."""
        cap = self.history.shape[-1]
        return self.history[o, :, :, cap - n:].flip(-1).permute(1, 0, 2)

    def newest_output(self, o: int, t: int, w: torch.Tensor) -> torch.Tensor:
        """Filter o's output at position t (its input w (B, d, 1) already written):
        sum_{s<=t} h[s] w[t-s] + b w[t], one dot product per channel. (B, d, 1)."""
        cap = self.history.shape[-1]
        held = self.history[o, :, :, cap - 1 - t:]  # (d, B, t+1): w[t], w[t-1], ..., w[0]
        taps = self.filters[o, :, None, : t + 1]  # (d, 1, t+1): h[0], ..., h[t]
        # multiply-and-sum in time blocks: each product stays in cache, where one (d, B, t)
        # product (or bmm over d tiny matrices) runs 2-5x slower at t ~ 1e3..1e4
        y = None
        for a in range(0, t + 1, self.DOT_BLOCK):
            b = min(t + 1, a + self.DOT_BLOCK)
            part = (held[..., a:b] * taps[..., a:b]).sum(-1)  # (d, B)
            y = part if y is None else y.add_(part)
        return torch.addcmul(y.mT[..., None], w, self.bias[o][:, None])


def mask_pads(t: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """t (B, C, T) with the columns of pad positions (mask (B, T) == 0) zeroed; t itself without a mask."""
    return t if mask is None else t * mask[:, None, :].to(t.dtype)


def _short_conv_continued(op: HyenaOperator, p: torch.Tensor, state: HyenaConvState) -> torch.Tensor:
    """The short conv of the projected inputs p (B, W, T) continuing the FIR state; updates it."""
    k = op.short_filter.kernel_size[0]
    if state.fir is None:  # nothing before: exactly the stateless short conv
        z = causal_depthwise_conv(p, op.short_filter)
        padded = F.pad(p[..., -(k - 1):], (max(0, k - 1 - p.shape[-1]), 0)) if k > 1 else p[..., :0]
        state.fir = padded.clone()
        return z
    window = torch.cat([state.fir, p], dim=-1)  # (B, W, k-1+T)
    state.fir = window[..., window.shape[-1] - (k - 1):].clone()
    return F.conv1d(window, op.short_filter.weight, op.short_filter.bias, groups=window.shape[1])


def conv_forward(op: HyenaOperator, u: torch.Tensor, state: HyenaConvState) -> torch.Tensor:
    """The operator on T new tokens u (B, T, d) after the positions `state` holds; updates it.

    A prompt (empty state) runs exactly the stateless FFT path and keeps its filter inputs; a
    single token is one dot product per channel over the held inputs; a chunk after a prefix runs
    the FFT convolution over the whole history and keeps its last T outputs.
    """
    B, T, d = u.shape
    start = state.seen
    state.reserve(op, start + T, u)
    p = mask_pads(op.project_in(u), state.input_mask)  # (B, (N+1) d, T)
    z = mask_pads(_short_conv_continued(op, p, state), state.input_mask)
    *x, v = z.split(d, dim=1)
    if start == 0:  # a prompt: the stateless computation, keeping each long filter's input
        inputs, y = gated_long_conv_inputs(x, v, op.filter_fn.response(T, fft_size(T), fft_dtype(u.dtype)))
        for o, w in enumerate(inputs):
            state.write(o, w, 0)
    else:
        for o in range(len(x) - 1):
            w = v * x[len(x) - 1 - o]  # (B, d, T)
            state.write(o, w, start)
            if T == 1:
                v = state.newest_output(o, start, w)
            else:
                v = fft_causal_conv(state.inputs(o, start + T), state.filters[o], state.bias[o])[..., -T:]
        y = v * x[0]
    state.seen = start + T
    return op.out_proj(y.mT)  # (B, T, d)


class MultiHyenaKVState(MixerLayerState):
    """fir (B, W, k-1); keys and values (B, G, capacity, N), positions 0..seen-1 filled."""

    def __init__(self):
        super().__init__()
        self.fir: torch.Tensor | None = None
        self.keys: torch.Tensor | None = None
        self.values: torch.Tensor | None = None

    def reset(self) -> None:
        self.fir = self.keys = self.values = None
        self.seen = 0

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        if self.fir is not None:
            idx = beam_idx.to(self.fir.device)
            self.fir, self.keys, self.values = (t.index_select(0, idx) for t in (self.fir, self.keys, self.values))

    def _tensors(self) -> list[torch.Tensor]:
        used = [None if t is None else t[:, :, : self.seen] for t in (self.keys, self.values)]
        return [self.fir, *used]

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store the new keys/values (B, G, T, N) after the held ones (capacity doubles when full);
        returns all of them so far, (B, G, seen+T, N) views."""
        start, T = self.seen, k.shape[2]
        if self.keys is None or self.keys.shape[2] < start + T:
            cap = max(start + T, 2 * (self.keys.shape[2] if self.keys is not None else 0), 64)
            grown = [k.new_zeros(*k.shape[:2], cap, k.shape[3]) for _ in range(2)]
            if self.keys is not None:
                grown[0][:, :, :start], grown[1][:, :, :start] = self.keys[:, :, :start], self.values[:, :, :start]
            self.keys, self.values = grown
        self.keys[:, :, start:start + T], self.values[:, :, start:start + T] = k, v
        return self.keys[:, :, :start + T], self.values[:, :, :start + T]


class MultiHyenaModalState(MixerLayerState):
    """One modal MultiHyena layer's decoding state (hyena/recurrence/multihyena.py): fir (B, W, k-1) and S (B, H, modes, N, N) complex."""

    def __init__(self):
        super().__init__()
        self.fir: torch.Tensor | None = None
        self.S: torch.Tensor | None = None

    def reset(self) -> None:
        self.fir, self.S, self.seen = None, None, 0

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        if self.fir is not None:
            self.fir = self.fir.index_select(0, beam_idx.to(self.fir.device))
            self.S = self.S.index_select(0, beam_idx.to(self.S.device))

    def _tensors(self) -> list[torch.Tensor]:
        return [self.fir, self.S]


KINDS = ("hyena", "modal", "attention", "multihyena", "multihyena_modal")


class MixerCache(Cache):
    """One state per decoder layer, of the layer's kind (KINDS)."""

    def __init__(self, layers: list[CacheLayerMixin]):
        super().__init__(layers=layers)

    @classmethod
    def for_kinds(cls, kinds: Sequence[str]) -> MixerCache:
        unknown = sorted(set(kinds) - set(KINDS))
        if unknown:
            raise ValueError(f"unknown decoder layer kind(s) {unknown}; known: {', '.join(KINDS)}")
        make = {"hyena": HyenaConvState, "modal": ModalLayerState, "attention": DynamicLayer,
                "multihyena": MultiHyenaKVState, "multihyena_modal": MultiHyenaModalState}
        return cls([make[k]() for k in kinds])

    def set_input_mask(self, mask: torch.Tensor | None) -> None:
        """Mark the real tokens (mask (B, T) nonzero) of the chunk the next forward absorbs; None:
        all real. Only Hyena states read it (a KV layer gets the attention mask instead)."""
        if mask is not None and bool(mask.all()):
            mask = None  # nothing to zero: keep the unpadded path's exact kernels
        for layer in self.layers:
            if isinstance(layer, MixerLayerState):
                layer.input_mask = mask

    def only_mixers(self) -> bool:
        """Whether every layer is a Hyena mixer (no KV cache: no positions or masks needed)."""
        return all(isinstance(layer, MixerLayerState) for layer in self.layers)

    def nbytes(self) -> int:
        """Bytes held (all layers, all sequences of the batch)."""
        total = 0
        for layer in self.layers:
            if isinstance(layer, MixerLayerState):
                total += layer.nbytes()
            elif getattr(layer, "keys", None) is not None:
                total += layer.keys.nbytes + layer.values.nbytes
        return total


def layer_state(kwargs: dict, layer_idx: int | None) -> CacheLayerMixin | None:
    """The state of decoder layer `layer_idx` from the cache a decoder layer passed (under either
    name), or None for a stateless call."""
    cache = kwargs.get("cache")
    if cache is None:
        cache = kwargs.get("layer_past")
    if not isinstance(cache, Cache):
        return None
    if layer_idx is None:
        raise RuntimeError("a Hyena mixer got a cache but no layer index: build caches with the model's new_cache()")
    return cache.layers[layer_idx]
