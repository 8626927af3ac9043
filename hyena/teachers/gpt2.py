"""GPT-2: transformer.h[i].attn behind ln_1, Conv1D projections, learned absolute positions (wpe),
which the student keeps: they are part of layer 1's input, not of the attention."""

from __future__ import annotations

import torch.nn as nn

from hyena.teachers.adapter import AttentionProjections, TeacherAdapter

ADAPTER = TeacherAdapter("gpt2", "transformer", "wte", "attn", norm_attr="ln_1", layers_attr="h",
                         position_attr="wpe", dropout_attr="drop", final_norm_attr="ln_f")


def projections(attn: nn.Module, config) -> AttentionProjections:
    """GPT-2: Q/K/V fused in one Conv1D `c_attn` whose weight is (d_in, 3d), i.e. y = x @ W + b:
    the transpose of a Linear weight. Its output splits into [Q | K | V] blocks of d columns
    (heads laid out one after another inside each); `c_proj` is a Conv1D too."""
    d = config.hidden_size
    w = attn.c_attn.weight.detach().T  # (3d, d_in), Linear layout
    b = attn.c_attn.bias.detach()
    q, k, v = (w[j * d : (j + 1) * d] for j in range(3))
    qb, kb, vb = (b[j * d : (j + 1) * d] for j in range(3))
    return AttentionProjections(q, k, v, attn.c_proj.weight.detach().T, qb, kb, vb, attn.c_proj.bias.detach())

