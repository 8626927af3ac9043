"""Training compute, so the from-scratch baseline can get exactly the distilled student's budget.

FLOPs per token follow the usual 6N rule (2N forward, 4N backward) for the parameters a token
flows through during training: for distilling layer i that is the layer's parameters (upper
bound: the frozen MLP still needs activation gradients, but no weight gradients); for LM
training it is every parameter but the input embedding lookup (the LM head is a matmul; a
tied head is counted once). Mixing (FFT) FLOPs are small at these widths and left out; the
teacher's forward pass for the activation dump is a sunk cost shared by all students and is
reported separately, not charged.
"""

from __future__ import annotations

import torch.nn as nn


def lm_params(model: nn.Module) -> int:
    """Parameters a token passes through in a causal LM forward (input embedding excluded)."""
    emb = model.get_input_embeddings().weight
    total = sum(p.numel() for p in model.parameters())  # tied weights are yielded once
    head = model.get_output_embeddings()
    tied = head is not None and head.weight is emb
    return total if tied else total - emb.numel()


def distill_flops(layer_params: list[int], tokens_per_layer: list[int]) -> float:
    return float(sum(6 * p * t for p, t in zip(layer_params, tokens_per_layer, strict=True)))


def lm_flops(n_params: int, tokens: int) -> float:
    return 6.0 * n_params * tokens


def tokens_for_flops(flops: float, n_params: int) -> int:
    return int(flops / (6.0 * n_params))
