"""Laughing Hyena for MultiHyena: each head's filter in modal form, decoded in O(1) per token.

With head m's filter h[0] = D, h[k] = Re(sum_n R_n p_n^(k-1)) for k >= 1 (modal.py), fitted on
`H` filters per layer instead of the Hyena mixer's d, the mix y_t = sum_{s<=t} h[t-s] (q_t . k_s) v_s
becomes, per head and mode n, a matrix-valued linear recurrence:

    S_n(t+1) = p_n S_n(t) + k_t v_t^T                    (N x N complex, S_n(0) = 0)
    y_t      = D (q_t . k_t) v_t + Re( sum_n R_n q_t^T S_n(t) )

so the state per sequence is heads x modes x N x N complex numbers per layer (plus the short
conv's k-1 projected inputs), independent of the context: SmolLM2 (30 layers, 9 heads of 64,
16 modes) holds 9*16*64*64*8 B = 4.7 MB a layer, 142 MB a sequence, the teacher's KV cache at
~3K tokens (`state_bytes_table`). Grouped-query heads share k and v but not poles, so the state
is per query head.

A chunk of T tokens after a state S (prefill: S = 0) is exact without a token loop:

    y_t   = [masked-quadratic mix with the modal kernel]_t + Re( sum_n R_n p_n^(t-t0) q_t^T S_n )
    S_new = p^T S + sum_j p^(T-1-j) k_j v_j^T
"""

from __future__ import annotations

import torch

from hyena.model.cache import MultiHyenaModalState, _short_conv_continued, layer_state, mask_pads
from hyena.model.multihyena import MultiHyenaOperator, mix_quadratic
from hyena.model.operator import HyenaConfig, project_channel_major
from hyena.recurrence.modal import ModalFilter, ModalFitConfig, fit_modal, modal_powers

CHUNK = 1024  # prompt tokens absorbed per chunk (bounds the quadratic intra-chunk mix)


class RecurrentMultiHyena(MultiHyenaOperator):
    """A MultiHyena operator whose per-head filters are modal (`modal`, shape (1, H) like the
    student's filter_fn): same projections and short conv, no implicit filter, any length.
    forward(hidden_states, **kwargs) -> (y, None); with a cache (`cache` / `layer_past`) it
    continues that layer's `MultiHyenaModalState`, without one it is the stateless operator with
    the modal kernel (any of `mix`'s paths)."""

    cache_kind = "multihyena_modal"
    layer_idx: int | None = None

    def __init__(self, d_model: int, heads: int, kv_heads: int, cfg: HyenaConfig, modal_order: int,
                 min_decay: float = 1e-6):
        super().__init__(d_model, heads, kv_heads, cfg)
        del self.filter_fn  # the modal form replaces it
        self.modal = ModalFilter((1, heads), modal_order, min_decay)

    @classmethod
    def from_operator(cls, op: MultiHyenaOperator, modal: ModalFilter) -> RecurrentMultiHyena:
        """Share `op`'s projections and short conv; the filters come from `modal` (1, H)."""
        if modal.shape != (1, op.heads):
            raise ValueError(f"modal filter shape {modal.shape} does not match the operator's (1, {op.heads})")
        mixer = cls(op.d_model, op.heads, op.kv_heads, op.cfg, modal.order, modal.min_decay)
        mixer.in_proj, mixer.out_proj, mixer.short_filter, mixer.modal = op.in_proj, op.out_proj, op.short_filter, modal
        return mixer.to(op.in_proj.weight.device)

    def check_len(self, L: int) -> None:
        pass  # a modal filter has every length

    def filters(self, L: int) -> torch.Tensor:
        """The modal filters materialised with D at tap 0: (H, L)."""
        tail = self.modal.tail_kernel(L)[0]  # (H, L), tap 0 = 0
        return torch.cat([tail[:, :1] + self.modal.D[0][:, None], tail[:, 1:]], dim=1)

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs) -> tuple[torch.Tensor, None]:
        state = layer_state(kwargs, self.layer_idx)
        if state is None:
            return super().forward(hidden_states), None
        if not isinstance(state, MultiHyenaModalState):
            raise TypeError(f"decoder layer {self.layer_idx} is a modal MultiHyena mixer but its cache layer "
                            f"is a {type(state).__name__}")
        T = hidden_states.shape[1]
        if T == 1 and state.S is not None:
            return self.step(hidden_states, state), None
        return torch.cat([self.chunk(hidden_states[:, t0:t0 + CHUNK], state) for t0 in range(0, T, CHUNK)], dim=1), None

    def chunk(self, u: torch.Tensor, state: MultiHyenaModalState | None = None) -> torch.Tensor:
        """The mixer on T new tokens u (B, T, d) after the state (None: a fresh one); updates it."""
        state = state if state is not None else MultiHyenaModalState()
        T = u.shape[1]
        p = mask_pads(project_channel_major(self.in_proj, u), state.input_mask)  # (B, W, T)
        z = mask_pads(_short_conv_continued(self, p, state), state.input_mask)
        q, k, v = self.split_heads(z)  # (B, H, T, N), (B, G, T, N) x 2
        y = mix_quadratic(q, k, v, self.filters(T).to(q.dtype))  # within the chunk
        g = self.heads // self.kv_heads
        k, v = k.repeat_interleave(g, dim=1), v.repeat_interleave(g, dim=1)  # (B, H, T, N): per-head state
        decay, theta = self.modal.decay()[0], self.modal.theta[0]  # (H, n)
        if state.S is not None:
            ahead = modal_powers(decay, theta, 0, T)  # (H, n, T): p^(t - t0)
            read = torch.einsum("bhti,bhnij->bhtnj", q.to(torch.complex64), state.S)  # (B, H, T, n, N)
            y = y + torch.einsum("bhtnj,hnt->bhtj", read, self.modal.residues()[0][..., None] * ahead).real.to(y.dtype)
            state.S = state.S * (self.modal.poles()[0] ** T)[None, :, :, None, None]
        else:
            state.S = q.new_zeros(u.shape[0], self.heads, self.modal.order, self.head_dim, self.head_dim,
                                  dtype=torch.complex64)
        back = modal_powers(decay, theta, 0, T).flip(-1)  # (H, n, T): p^(T-1-j)
        kv = torch.einsum("bhti,bhtj->bhtij", k, v).to(torch.complex64).flatten(-2)  # (B, H, T, N*N)
        state.S = state.S + torch.einsum("hnt,bhtc->bhnc", back, kv).view_as(state.S)
        state.seen += T
        return self.out_proj(y.transpose(1, 2).reshape(u.shape[0], T, self.d_model))

    def step(self, u: torch.Tensor, state: MultiHyenaModalState) -> torch.Tensor:
        """One new token u (B, 1, d) after a non-empty state: `chunk` at T = 1 without its power
        tables and quadratic mix, y = D (q.k) v + Re(sum_n R_n q^T S_n), S_n <- p_n S_n + k v^T."""
        B = u.shape[0]
        p = mask_pads(project_channel_major(self.in_proj, u), state.input_mask)  # (B, W, 1)
        z = mask_pads(_short_conv_continued(self, p, state), state.input_mask)
        q, k, v = (t[:, :, 0] for t in self.split_heads(z))  # (B, H, N), (B, G, N) x 2
        g = self.heads // self.kv_heads
        k, v = k.repeat_interleave(g, dim=1), v.repeat_interleave(g, dim=1)  # (B, H, N)
        y = self.modal.D[0][:, None] * (q * k).sum(-1, keepdim=True) * v  # (B, H, N): the pass-through
        y = y + self.read_state(q, state.S).to(y.dtype)
        state.S = self.advance_state(state.S, k, v)
        state.seen += 1
        return self.out_proj(y.reshape(B, 1, self.d_model))

    def read_state(self, q: torch.Tensor, S: torch.Tensor) -> torch.Tensor:
        """Re(sum_n R_n q^T S_n) for q (B, H, N), S (B, H, n, N, N) complex -> (B, H, N), in real
        arithmetic: one batched matmul over S's real and imaginary parts, then the residues
        (Re(R s) = R.re s.re - R.im s.im). With the in-place update, 6.5x faster a step (median) than
        a complex einsum and a new state tensor per token (benchmarks/bench_multihyena_step.py)."""
        B, H, n, N, _ = S.shape
        rows = q.float()[:, :, None, None, :].expand(B, H, n, 1, N).reshape(B * H * n, 1, N)
        read = torch.bmm(rows, torch.view_as_real(S).reshape(B * H * n, N, 2 * N))  # (BHn, 1, 2N): q^T S, re/im
        R = self.modal.residues()[0]  # (H, n)
        weights = torch.stack([R.real, -R.imag], dim=-1)  # (H, n, 2)
        return torch.einsum("bhnjc,hnc->bhj", read.view(B, H, n, N, 2), weights)

    def advance_state(self, S: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """S_n <- p_n S_n + k v^T for one token, k and v (B, H, N): in place when decoding (no
        new 4.7 MB tensor a layer per token), out of place when autograd needs the old S."""
        poles = self.modal.poles()[0][None, :, :, None, None]  # (1, H, n, 1, 1)
        kv = (k[..., :, None] * v[..., None, :])[:, :, None]  # (B, H, 1, N, N)
        return S * poles + kv if torch.is_grad_enabled() else S.mul_(poles).add_(kv)

    def state_bytes(self, batch: int = 1) -> int:
        """Bytes of this layer's decoding state for `batch` sequences (modal state + FIR)."""
        fir = self.short_filter.in_channels * (self.short_filter.kernel_size[0] - 1) * 4
        return batch * (self.heads * self.modal.order * self.head_dim ** 2 * 8 + fir)


def to_recurrent_multihyena(op: MultiHyenaOperator, fit_len: int, cfg: ModalFitConfig | None = None
                            ) -> tuple[RecurrentMultiHyena, dict]:
    """Fit `cfg.order` modes to each of the operator's H head filters over `fit_len` taps (the
    pass-through b folds into D). Returns the recurrent mixer (sharing op's projections) and the
    fit report (relative L2 error of the filters)."""
    with torch.no_grad():
        h = op.filter_fn(fit_len).float()  # (1, H, L)
    modal, report = fit_modal(h, cfg, passthrough=op.filter_fn.bias)
    return RecurrentMultiHyena.from_operator(op, modal.to(h.device)), report


def kv_cache_bytes(n_layers: int, kv_heads: int, head_dim: int, tokens: int, bytes_per: int = 4) -> int:
    """A transformer's KV cache for one sequence: keys and values per layer, per token."""
    return 2 * n_layers * kv_heads * head_dim * tokens * bytes_per


def state_bytes_table(n_layers: int, heads: int, kv_heads: int, head_dim: int, modes: int,
                      lengths=(1024, 4096, 16384)) -> list[dict]:
    """MultiHyena's recurrent state per sequence (complex64 modes x N x N per head and layer)
    beside the teacher's fp32 KV cache at each length: the cost side users choose on."""
    state = n_layers * heads * modes * head_dim ** 2 * 8
    return [{"tokens": L, "kv_cache_mb": kv_cache_bytes(n_layers, kv_heads, head_dim, L) / 2**20,
             "multihyena_state_mb": state / 2**20} for L in lengths]
