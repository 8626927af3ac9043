"""MultiHyena as a student's sequence mixer: the Hugging Face attention call, and cached decoding.

`MultiHyenaMixer` is a `MultiHyenaOperator` that accepts a decoder layer's attention call and
returns `(y, None)`, like `HyenaMixer`. Positions and masks are ignored (the filters carry
position; causality is built in).

Cached decoding (`hyena.model.cache.MultiHyenaKVState`, cache kind "multihyena") is exact: y_t = sum_{s<=t} h[t-s]
(q_t . k_s) v_s needs every past key and value, so the state is a KV cache (plus the short conv's
last k-1 projected inputs), and a new token costs one row of the masked-quadratic mix, O(t N) per
head, over only the keys within the filters' support (`filter_support`). Its size grows with the
context like the teacher's; the O(1) state is the modal student's (hyena/recurrence/multihyena.py).
"""

from __future__ import annotations

import torch

from hyena.model.cache import MultiHyenaKVState, _short_conv_continued, layer_state, mask_pads
from hyena.model.multihyena import (
    QUADRATIC_MAX_LEN,
    MultiHyenaOperator,
    filter_support,
    mix_quadratic,
)
from hyena.model.operator import project_channel_major, reset_hyena_parameters


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
        """The reference Hyena initialisation (operator.reset_hyena_parameters)."""
        reset_hyena_parameters(self, self.cfg.sine_freq)
