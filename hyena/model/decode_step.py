"""One new token through a Llama-family decoder layer in fewer kernels (batch-1 decoding).

A decode step multiplies one row with every weight, so it is bound by reading the weights; a
stock decoder layer adds ~40 small kernels on top (two RMSNorms of ~8 ops each, three MLP
GEMVs, residual adds), about a quarter of a SmolLM2 step on this CPU (BENCHMARKS.md,
"Generation"). Inside `decode_layout`:

- `pack_gate_up` stores a gated MLP's gate and up projections as two views of one (d, 2 ff)
  array, so one GEMV streams both (the module's own forward still works on the views);
- `layer_step` runs such a layer for one token with that GEMV and a 5-kernel RMSNorm (the
  modules' own norm launches 8, and `F.rms_norm` is no faster on CPU).

Same math as the layer's forward; only fp32 rounding differs (tests compare logits and greedy
tokens). Layers of other shapes (GPT-NeoX's parallel residual, GPT-2's LayerNorm) keep their
own forward.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from hyena.core.runtime import first_output

# the RMSNorms whose forward is exactly weight * x / sqrt(mean(x^2) + eps) (Gemma's 1 + weight is not)
RMS_NORMS = frozenset({"LlamaRMSNorm", "MistralRMSNorm", "Qwen2RMSNorm", "Qwen3RMSNorm"})


def pack_gate_up(mlp: nn.Module) -> bool:
    """Make `mlp.gate_proj` / `up_proj` weights views of one (d, 2 ff) array `mlp.packed_gate_up`
    (transposed layout, as `decode_layout` stores weights). False (nothing done) for other MLPs."""
    gate, up = getattr(mlp, "gate_proj", None), getattr(mlp, "up_proj", None)
    if not (isinstance(gate, nn.Linear) and isinstance(up, nn.Linear)) or gate.bias is not None \
            or up.bias is not None or gate.weight.shape != up.weight.shape or gate.weight.device.type != "cpu":
        return False
    ff = gate.out_features
    packed = torch.cat([gate.weight.detach().t(), up.weight.detach().t()], dim=1).contiguous()  # (d, 2 ff)
    gate.weight.data, up.weight.data = packed[:, :ff].t(), packed[:, ff:].t()  # (ff, d) views
    mlp.packed_gate_up = packed
    return True


def unpack_gate_up(mlp: nn.Module) -> None:
    """Undo `pack_gate_up`: standard contiguous (ff, d) weights again."""
    if getattr(mlp, "packed_gate_up", None) is None:
        return
    for proj in (mlp.gate_proj, mlp.up_proj):
        proj.weight.data = proj.weight.data.contiguous()
    del mlp.packed_gate_up


def fusable(layer: nn.Module) -> bool:
    """A pre-norm decoder layer with RMSNorms and a packed gated MLP (Llama, Mistral, Qwen2/3)."""
    norms = (getattr(layer, "input_layernorm", None), getattr(layer, "post_attention_layernorm", None))
    return all(type(n).__name__ in RMS_NORMS for n in norms) \
        and getattr(getattr(layer, "mlp", None), "packed_gate_up", None) is not None


def layer_step(layer: nn.Module, mixer: nn.Module, h: torch.Tensor, mixer_kwargs: dict) -> torch.Tensor:
    """The layer's output for one new token, h (B, 1, d) -> (B, 1, d); `mixer` is its sequence
    mixer (called with `mixer_kwargs`, e.g. the cache), `layer` must be `fusable`."""
    h = h + first_output(mixer(rms_norm(layer.input_layernorm, h), **mixer_kwargs))
    gate, up = (rms_norm(layer.post_attention_layernorm, h) @ layer.mlp.packed_gate_up).chunk(2, dim=-1)  # (B, 1, ff) each
    return h + layer.mlp.down_proj(layer.mlp.act_fn(gate) * up)


def rms_norm(norm: nn.Module, h: torch.Tensor) -> torch.Tensor:
    """`norm(h)` for an fp32 h in fewer kernels, the same operations in the same order (so the
    same bits); other dtypes go through the module, which upcasts to fp32."""
    if h.dtype != torch.float32:
        return norm(h)
    return h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + norm.variance_epsilon) * norm.weight
