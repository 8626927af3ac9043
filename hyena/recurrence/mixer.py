"""Recurrent Hyena mixer: the operator with modal long filters, run by FFT or one token at a time.

For one long filter with modal form (p, R, D) (see modal.py) and its input w_t = v_t * x_t:

    y_t = D w_t + sum_{j<t} h[t-j] w_j = D w_t + Re( sum_n R_n s_{t-1,n} ),
    s_t = p * s_{t-1} + w_t,           so s_{t-1} = sum_{j<t} p^(t-1-j) w_j

(h[k] = Re(sum R p^(k-1)) for k >= 1). A chunk of T new tokens after a state s (T = the whole
prompt for prefill, s = 0) is, exactly and without a loop over tokens:

    y_t   = [FFT conv of w with the modal kernel]_t + D w_t + Re( sum_n R_n p_n^t s_n )
    s_new = p^T s + sum_j p^(T-1-j) w_j

The short depthwise conv keeps its last k-1 projected inputs (the FIR state). Decoding one token
costs O(d (N + k)) per long filter plus the projections, independent of the context length;
the state per sequence is (order-1) * d * N complex numbers + (order+1) * d * (k-1) reals.

A `MixerCache` (hyena/model/cache.py) holds one `ModalLayerState` per modal decoder layer; the decoder
layer hands it to its mixer under the name its family uses (`cache`, or `layer_past` for GPT-NeoX).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from hyena.model.cache import MixerCache, ModalLayerState, layer_state, mask_pads
from hyena.model.fftconv import causal_depthwise_conv, fft_causal_conv, project_channel_major
from hyena.model.operator import HyenaConfig, HyenaOperator
from hyena.recurrence.modal import ModalFilter, modal_absorb, modal_powers, modal_response


class HyenaRecurrentCache(MixerCache):
    """Recurrent states of `n_layers` decoder layers that are all modal mixers (a `MixerCache`)."""
    def __init__(self, n_layers: int):
        super().__init__([ModalLayerState() for _ in range(n_layers)])


class RecurrentHyenaMixer(nn.Module):
    """A Hyena operator whose long filters are modal (p, R, D): same projections and short conv.

    forward(hidden_states, *args, **kwargs) accepts the HF attention call and returns (y, None).
    With a cache in kwargs (under `cache` or `layer_past`) it continues that
    layer's state (prefill or chunk by FFT, single tokens by the recurrence); without one it is a
    stateless causal mixer, exactly the convolution with the modal filters.
    """
    cache_kind = "modal"  # the MixerCache layer state this mixer keeps (hyena/model/cache.py)

    def __init__(self, d_model: int, cfg: HyenaConfig, modal_order: int, layer_idx: int = 0,
                 min_decay: float = 1e-6):
        super().__init__()
        self.cfg, self.d_model, self.layer_idx = cfg, d_model, layer_idx
        width = d_model * (cfg.order + 1)
        self.in_proj = nn.Linear(d_model, width)
        self.out_proj = nn.Linear(d_model, d_model)
        k = cfg.short_filter_len
        self.short_filter = nn.Conv1d(width, width, k, padding=k - 1, groups=width)
        self.modal = ModalFilter((cfg.order - 1, d_model), modal_order, min_decay)
        self._kernel: tuple[tuple, torch.Tensor] | None = None
        self._consts: tuple[tuple, tuple[torch.Tensor, torch.Tensor]] | None = None

    @classmethod
    def from_operator(cls, op: HyenaOperator, modal: ModalFilter, layer_idx: int = 0) -> RecurrentHyenaMixer:
        """Share `op`'s projections and short conv; long filters come from `modal` (order-1, d)."""
        if modal.shape != (op.cfg.order - 1, op.d_model):
            raise ValueError(f"modal filter shape {modal.shape} does not match the operator "
                             f"({op.cfg.order - 1}, {op.d_model})")
        mixer = cls(op.d_model, op.cfg, modal.order, layer_idx, modal.min_decay)
        mixer.in_proj, mixer.out_proj, mixer.short_filter = op.in_proj, op.out_proj, op.short_filter
        mixer.modal = modal
        return mixer.to(op.in_proj.weight.device)

    # ---- cached constants (recomputed when parameters change) --------------------------------
    def _version(self) -> tuple:
        return tuple(p._version for p in self.modal.parameters()) + (self.modal.D.device,)

    def tail_kernel(self, L: int) -> torch.Tensor:
        """Modal kernel (order-1, d, L) with k[0] = 0 (D is applied as the pass-through). At
        inference the longest kernel built so far is kept and shorter ones are its prefixes."""
        if torch.is_grad_enabled():
            return self.modal.tail_kernel(L)
        key = self._version()
        if self._kernel is None or self._kernel[0] != key or self._kernel[1].shape[-1] < L:
            self._kernel = (key, self.modal.tail_kernel(L))
        return self._kernel[1][..., :L]

    def _decode_constants(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Poles p and Re(R) / -Im(R) side by side, (F, d, N) complex and (F, d, N, 2) real."""
        key = self._version()
        if torch.is_grad_enabled() or self._consts is None or self._consts[0] != key:
            R = self.modal.residues()
            self._consts = (key, (self.modal.poles(), torch.stack([R.real, -R.imag], dim=-1)))
        return self._consts[1]

    # ---- the three paths ---------------------------------------------------------------------
    def forward(self, hidden_states: torch.Tensor, *args, **kwargs) -> tuple[torch.Tensor, None]:
        state = layer_state(kwargs, self.layer_idx)
        if state is not None and not isinstance(state, ModalLayerState):
            raise TypeError(f"decoder layer {self.layer_idx} is a modal Hyena mixer but its cache layer is a {type(state).__name__}")
        if state is not None and state.seen > 0 and hidden_states.shape[1] == 1:
            return self.step(hidden_states[:, 0], state)[:, None], None
        return self.chunk(hidden_states, state), None

    def _short_conv(self, p: torch.Tensor, state: ModalLayerState | None) -> torch.Tensor:
        """Causal depthwise conv of the projected inputs p (B, W, T) continuing the FIR state; updates it."""
        k = self.short_filter.kernel_size[0]
        if state is None or state.fir is None:  # nothing before: the operator's stateless short conv
            if state is not None:
                state.fir = F.pad(p[..., max(0, p.shape[-1] - (k - 1)):], (max(0, k - 1 - p.shape[-1]), 0)).clone()
            return causal_depthwise_conv(p, self.short_filter)
        window = torch.cat([state.fir, p], dim=-1)  # (B, W, k-1+T)
        state.fir = window[..., window.shape[-1] - (k - 1):].clone()  # clone: do not pin the whole chunk
        return F.conv1d(window, self.short_filter.weight, self.short_filter.bias, groups=window.shape[1])

    def chunk(self, u: torch.Tensor, state: ModalLayerState | None = None) -> torch.Tensor:
        """T tokens at once (B, T, d) -> (B, T, d): FFT convolution plus the carried-in state."""
        B, T, d = u.shape
        mask = None if state is None else state.input_mask  # (B, T) of a left-padded chunk: pads add nothing
        p = mask_pads(project_channel_major(self.in_proj, u), mask)  # (B, W, T)
        z = mask_pads(self._short_conv(p, state), mask)
        *x, v = z.split(d, dim=1)  # each (B, d, T)
        kern = self.tail_kernel(T)  # (F, d, T)
        D = self.modal.D  # (F, d)
        carry = state is not None and state.modal is not None
        new_states = []
        for o, x_i in enumerate(reversed(x[1:])):
            w = v * x_i  # (B, d, T)
            y = fft_causal_conv(w, kern[o], D[o])
            if carry:
                y = y + self._state_response(o, state.modal[:, o], T)
            if state is not None:
                new_states.append(self._absorb(o, state.modal[:, o] if carry else None, w))
            v = y
        if state is not None:
            state.modal = torch.stack(new_states, dim=1)  # (B, F, d, N)
            state.seen += T
        return self.out_proj((v * x[0]).mT)  # (B, T, d)

    def _state_response(self, o: int, s: torch.Tensor, T: int) -> torch.Tensor:
        """Re(sum_n R_n p_n^t s_n) for t < T: the carried-in state's effect, (B, d, T)."""
        m = self.modal
        coef = (m.residues()[o][None] * s).transpose(0, 1)  # (d, B, N)
        return modal_response(coef, m.decay()[o], m.theta[o], 0, T).transpose(0, 1)

    def _absorb(self, o: int, s: torch.Tensor | None, w: torch.Tensor) -> torch.Tensor:
        """State after the chunk: p^T s + sum_j p^(T-1-j) w_j, (B, d, N) complex64."""
        m = self.modal
        decay, theta = m.decay()[o], m.theta[o]
        new = modal_absorb(w.transpose(0, 1), decay, theta).transpose(0, 1)  # (B, d, N)
        if s is not None:
            new = new + modal_powers(decay, theta, w.shape[-1], 1)[..., 0] * s
        return new

    def step(self, u: torch.Tensor, state: ModalLayerState) -> torch.Tensor:
        """One token (B, d) -> (B, d): O(d (N + k)) per long filter beyond the projections; the
        modal state is updated in place."""
        d = self.d_model
        z = self.in_proj(u)  # (B, W)
        z = self._short_conv_step(z, state)  # (B, W)
        *x, v = z.split(d, dim=-1)  # each (B, d)
        p, R = self._decode_constants()  # (F, d, N) complex, (F, d, N, 2) real
        D = self.modal.D
        s = state.modal  # (B, F, d, N)
        for o, x_i in enumerate(reversed(x[1:])):
            w = v * x_i  # (B, d)
            s_o = s[:, o]
            # Re(sum_n R_n s_n), from the state BEFORE this token
            v = torch.addcmul((torch.view_as_real(s_o) * R[o]).sum((-1, -2)), D[o], w)
            s_o.mul_(p[o]).add_(w[..., None])
        state.seen += 1
        return self.out_proj(v * x[0])

    def _short_conv_step(self, z: torch.Tensor, state: ModalLayerState) -> torch.Tensor:
        """The short conv's output for one new projected input z (B, W); shifts the FIR state.
        One fused multiply-add per tap: at batch > 1 the (B, W, k) window product and its sum
        cost as much as the modal recurrence."""
        taps = self.short_filter.weight[:, 0, :]  # (W, k): the last tap multiplies the newest input
        fir = state.fir  # (B, W, k-1), oldest first
        y = torch.addcmul(self.short_filter.bias, z, taps[:, -1])
        for j in range(fir.shape[-1]):
            y.addcmul_(fir[..., j], taps[:, j])
        state.fir = torch.cat([fir[..., 1:], z[..., None]], dim=-1)
        return y

    def state_bytes(self, batch: int = 1) -> int:
        """Analytic state size per `batch` sequences: modal (complex64) + FIR (fp32)."""
        k = self.short_filter.kernel_size[0]
        fir = batch * self.in_proj.out_features * (k - 1) * self.in_proj.weight.element_size()
        return self.modal.state_bytes(batch) + fir
