"""GPT-NeoX (Pythia): parallel residual, rotary on part of each head, fused interleaved Q/K/V."""

from __future__ import annotations

import torch.nn as nn

from hyena.teachers.adapter import AttentionProjections, TeacherAdapter, detached_bias

ADAPTER = TeacherAdapter("gpt_neox", "gpt_neox", "embed_in", "attention", cache_kwarg="layer_past",
                         dropout_attr="emb_dropout", final_norm_attr="final_layer_norm")


def projections(attn: nn.Module, config) -> AttentionProjections:
    """GPT-NeoX fuses Q/K/V into one Linear whose output rows are interleaved per head:
    [q_h0 | k_h0 | v_h0 | q_h1 | k_h1 | v_h1 | ...] (the forward views them as (heads, 3*hs) and
    chunks the last axis). De-interleave: rows (heads, 3, hs) -> pick slot 0/1/2."""
    heads = config.num_attention_heads
    d = config.hidden_size
    hs = d // heads
    w = attn.query_key_value.weight.detach().view(heads, 3, hs, -1)  # (heads, 3, hs, d_in)
    b = attn.query_key_value.bias
    b = None if b is None else b.detach().view(heads, 3, hs)
    part = [w[:, j].reshape(heads * hs, -1) for j in range(3)]
    bias = [None if b is None else b[:, j].reshape(heads * hs) for j in range(3)]
    return AttentionProjections(*part, attn.dense.weight.detach(), *bias, detached_bias(attn.dense))

