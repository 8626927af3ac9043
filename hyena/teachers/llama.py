"""The Llama family: Llama (SmolLM2), Mistral, Qwen2 and Qwen3 share Llama's layout
(model.layers[i].self_attn behind input_layernorm, embed_tokens, rotary positions) and its
separate q/k/v/o projections; Qwen2 adds Q/K/V biases, Qwen3 a per-head norm on queries and keys."""

from __future__ import annotations

import torch
import torch.nn as nn

from hyena.teachers.adapter import AttentionProjections, TeacherAdapter, detached_bias

FAMILIES = ("llama", "mistral", "qwen2", "qwen3")
ADAPTERS = {family: TeacherAdapter(family, "model", "embed_tokens", "self_attn") for family in FAMILIES}


def projections(attn: nn.Module, config) -> AttentionProjections:
    """Llama: separate q/k/v/o. With grouped-query attention, kv head j serves query heads
    j*g .. j*g+g-1 (`repeat_kv`), so K/V rows are repeated per head with repeat_interleave."""
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    if heads * head_dim != config.hidden_size:
        raise ValueError(
            f"teacher attention width {heads}x{head_dim} != hidden_size {config.hidden_size}: "
            "its Q/K/V cannot seed a Hyena of the model width; use init=random"
        )
    groups = heads // kv_heads

    def widen(t: torch.Tensor | None) -> torch.Tensor | None:
        if t is None:
            return None
        t = t.detach()
        return t.view(kv_heads, head_dim, *t.shape[1:]).repeat_interleave(groups, dim=0).reshape(
            heads * head_dim, *t.shape[1:]
        )

    return AttentionProjections(
        attn.q_proj.weight.detach(), widen(attn.k_proj.weight), widen(attn.v_proj.weight),
        attn.o_proj.weight.detach(), detached_bias(attn.q_proj), widen(attn.k_proj.bias),
        widen(attn.v_proj.bias), detached_bias(attn.o_proj),
    )



def qwen3_projections(attn: nn.Module, config) -> AttentionProjections:
    """Qwen3: Llama's projections, then a per-head RMSNorm on queries and keys (q_norm, k_norm:
    gamma * x / rms(x) over each head's dims). Its scale gamma is linear and is folded into the
    Q/K rows (and biases); the division by the per-head RMS is not linear and is left out, so the
    seeded gates point along the teacher's normalised queries/keys, each head scaled by its RMS."""
    p = projections(attn, config)
    heads = config.num_attention_heads

    def fold(t: torch.Tensor | None, gamma: torch.Tensor) -> torch.Tensor | None:
        if t is None:
            return None
        scale = gamma.detach().repeat(heads)  # (heads * head_dim,): the same gamma for every head
        return t * scale.view(-1, *([1] * (t.ndim - 1)))

    return AttentionProjections(
        fold(p.q_weight, attn.q_norm.weight), fold(p.k_weight, attn.k_norm.weight), p.v_weight, p.o_weight,
        fold(p.q_bias, attn.q_norm.weight), fold(p.k_bias, attn.k_norm.weight), p.v_bias, p.o_bias,
    )

