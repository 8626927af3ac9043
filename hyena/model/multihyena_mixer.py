"""MultiHyena as a student's sequence mixer: the Hugging Face attention call, and cached decoding.

`MultiHyenaMixer` is a `MultiHyenaOperator` that accepts a decoder layer's attention call and
returns `(y, None)`, like `HyenaMixer`. Positions and masks are ignored (the filters carry
position; causality is built in).

Cached decoding (`MultiHyenaKVState`, cache kind "multihyena") is exact: y_t = sum_{s<=t} h[t-s]
(q_t . k_s) v_s needs every past key and value, so the state is a KV cache (plus the short conv's
last k-1 projected inputs), and a new token costs one row of the masked-quadratic mix, O(t N) per
head, over only the keys within the filters' support (`filter_support`). Its size grows with the
context like the teacher's; the O(1) state is the modal student's (hyena/recurrence/multihyena.py).
"""

from __future__ import annotations

import torch
import torch.nn as nn
from transformers import initialization as hf_init

from hyena.model.cache import MixerLayerState, _short_conv_continued, layer_state, mask_pads
from hyena.model.multihyena import (
    QUADRATIC_MAX_LEN,
    MultiHyenaOperator,
    filter_support,
    mix_quadratic,
)
from hyena.model.operator import HyenaFilter, Sin, project_channel_major


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


class MultiHyenaMixer(MultiHyenaOperator):
    """A MultiHyenaOperator with the attention call signature; see the module docstring."""

    cache_kind = "multihyena"
    layer_idx: int | None = None  # bound by the model's new_cache()

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs) -> tuple[torch.Tensor, None]:
        state = layer_state(kwargs, self.layer_idx)
        if state is None:
            return super().forward(hidden_states), None  # (B, L, d)
        if not isinstance(state, MultiHyenaKVState):
            raise TypeError(f"decoder layer {self.layer_idx} is a MultiHyena mixer but its cache layer is a "
                            f"{type(state).__name__}")
        return self.cached(hidden_states, state), None

    @torch.no_grad()
    def cached(self, u: torch.Tensor, state: MultiHyenaKVState) -> torch.Tensor:
        """T new tokens u (B, T, d) after the `state.seen` positions the state holds; updates it."""
        B, T, _ = u.shape
        start = state.seen
        self.check_len(start + T)
        p = mask_pads(project_channel_major(self.in_proj, u), state.input_mask)  # (B, W, T)
        z = mask_pads(_short_conv_continued(self, p, state), state.input_mask)
        q, k, v = self.split_heads(z)  # (B, H, T, N), (B, G, T, N) x 2
        keys, values = state.append(k, v)
        h = self.filters(start + T)  # (H, start+T)
        support = filter_support(h)
        window = support if support <= QUADRATIC_MAX_LEN else None
        y = mix_quadratic(q, keys, values, h, start=start, window=window)  # (B, H, T, N)
        state.seen = start + T
        return self.out_proj(y.transpose(1, 2).reshape(B, T, self.d_model))

    @torch.no_grad()
    def reset_hyena_parameters(self) -> None:
        """The Hyena initialisation (hyena.student.HyenaMixer.reset_hyena_parameters): PyTorch
        defaults for the projections, short conv and filter FFN, N(0, 1) pass-through, the sine
        frequency of the config; through torch.nn.init primitives that HF's guard respects."""
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Conv1d)):
                module.reset_parameters()
            elif isinstance(module, Sin):
                hf_init.constant_(module.freq, self.cfg.sine_freq)
            elif isinstance(module, HyenaFilter):
                hf_init.normal_(module.bias, 0.0, 1.0)
