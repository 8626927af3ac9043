"""The teacher adapter: where a decoder-only transformer keeps its parts.

One small `TeacherAdapter` per architecture family says where the decoder layers are, which
attribute of a layer is the attention, which modules produce the embedding output that feeds
layer 1, and how to embed tokens. `AttentionProjections` is an attention block's Q/K/V/O at full
width, which `student.init: teacher_attention` reads. The families themselves live in
`neox.py`, `llama.py` and `gpt2.py`; `families.py` is the registry.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn


@dataclass(frozen=True)
class TeacherAdapter:
    family: str  # model_type of the HF config
    base_attr: str  # attribute of the *ForCausalLM holding the base model
    embed_attr: str  # attribute of the base model: token embedding
    attn_attr: str  # attribute of a decoder layer: the attention block to replace
    norm_attr: str = "input_layernorm"  # attribute of a decoder layer: the norm in front of the attention
    layers_attr: str = "layers"  # attribute of the base model: the decoder layers
    cache_kwarg: str = "cache"  # name under which a decoder layer hands the cache to its attention
    position_attr: str | None = None  # attribute of the base model: learned absolute position embeddings
    dropout_attr: str | None = None  # attribute of the base model: dropout on the embedding output
    final_norm_attr: str = "norm"  # attribute of the base model: the norm after the last decoder layer

    def base(self, model: nn.Module) -> nn.Module:
        return getattr(model, self.base_attr)

    def layers(self, model: nn.Module) -> nn.ModuleList:
        return getattr(self.base(model), self.layers_attr)

    def input_norm(self, layer: nn.Module) -> nn.Module:
        return getattr(layer, self.norm_attr)

    def embedding(self, model: nn.Module) -> nn.Module:
        return getattr(self.base(model), self.embed_attr)

    def final_norm(self, model: nn.Module) -> nn.Module:
        return getattr(self.base(model), self.final_norm_attr)

    def attention(self, layer: nn.Module) -> nn.Module:
        return getattr(layer, self.attn_attr)

    def set_attention(self, layer: nn.Module, module: nn.Module) -> None:
        setattr(layer, self.attn_attr, module)

    def embed(self, model: nn.Module, input_ids: torch.Tensor, start: int = 0,
              positions: torch.Tensor | None = None) -> torch.Tensor:
        """What decoder layer 1 receives for input_ids (B, L) -> (B, L, d): the token embedding,
        plus the learned position embeddings of positions start..start+L-1 where the family has
        them, through the embedding dropout (active in training mode only, as in the model)."""
        base = self.base(model)
        h = self.embedding(model)(input_ids)  # (B, L, d)
        if self.position_attr is not None:
            if positions is None:  # else (B, L) per-row positions (left-padded batches)
                positions = torch.arange(start, start + input_ids.shape[1], device=input_ids.device)[None]  # (1, L)
            h = h + getattr(base, self.position_attr)(positions)
        dropout = getattr(base, self.dropout_attr) if self.dropout_attr is not None else None
        return dropout(h) if dropout is not None else h



@dataclass
class AttentionProjections:
    """An attention block's projections at full model width: q, k, v: (d, d) weights with (d,)
    biases (None when absent), mapping the normed input to per-head queries/keys/values laid
    out head after head; o: the output projection (d, d). Keys and values of grouped-query
    attention are repeated per group exactly as attention broadcasts them."""

    q_weight: torch.Tensor
    k_weight: torch.Tensor
    v_weight: torch.Tensor
    o_weight: torch.Tensor
    q_bias: torch.Tensor | None = None
    k_bias: torch.Tensor | None = None
    v_bias: torch.Tensor | None = None
    o_bias: torch.Tensor | None = None



def detached_bias(linear: nn.Linear) -> torch.Tensor | None:
    return None if linear.bias is None else linear.bias.detach()

