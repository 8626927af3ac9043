"""Training compute, so the from-scratch baseline can get exactly the distilled student's budget.

FLOPs per token follow the usual 6N rule (2N forward, 4N backward) for the parameters a token
flows through during training: for distilling layer i on its layer output that is the layer's
parameters (upper bound: the frozen MLP still needs activation gradients, but no weight
gradients); on its attention's output (attention transfer) it is the mixer's parameters plus a
2N forward of the teacher attention that makes the target, and a least-squares readout one forward
of the mixer and of the target plus the Gram matrix (2 (d+1)^2) per token and solve; a layer a
hybrid keeps costs nothing;
for LM training it is every parameter but the input embedding lookup (the LM head is a matmul;
a tied head is counted once), frozen ones included (an upper bound again). Mixing (FFT) FLOPs are
small at these widths and left out; the teacher's forward pass for the activation dump (and the
logits it caches) is a sunk cost shared by all students and is reported separately, not charged.
Every approximation errs towards MORE compute for the from-scratch baseline.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from transformers import AutoModelForCausalLM

from hyena.teachers import get_adapter
from hyena.train.batches import steps_for_epochs, steps_per_run


def lm_params(model: nn.Module) -> int:
    """Parameters a token passes through in a causal LM forward (input embedding excluded)."""
    emb = model.get_input_embeddings().weight
    total = sum(p.numel() for p in model.parameters())  # tied weights are yielded once
    head = model.get_output_embeddings()
    tied = head is not None and head.weight is emb
    return total if tied else total - emb.numel()


def distill_layer_flops_per_token(target: str, layer_params: int, mixer_params: int, attention_params: int) -> int:
    """Training FLOPs per token of one gradient step of a distill stage (see the module docstring)."""
    if target == "mixer_output":
        return 6 * mixer_params + 2 * attention_params
    return 6 * layer_params


def readout_flops_per_token(mixer_params: int, attention_params: int, d_model: int) -> int:
    """FLOPs per training token of one least-squares readout: the mixer's features and the target
    forward, and the token's share of the Gram matrix and cross terms."""
    return 2 * mixer_params + 2 * attention_params + 4 * (d_model + 1) ** 2


def distill_flops(flops_per_token: list[int], tokens_per_layer: list[int]) -> float:
    return float(sum(f * t for f, t in zip(flops_per_token, tokens_per_layer, strict=True)))


def lm_flops(n_params: int, tokens: int) -> float:
    return 6.0 * n_params * tokens


def tokens_for_flops(flops: float, n_params: int) -> int:
    return int(flops / (6.0 * n_params))


def equal_compute_tokens(model, distill, n_distill_seqs: int, seq_len: int,
                         finetune, n_finetune_seqs: int, ft_len: int, attention_params: int) -> tuple[int, dict]:
    """Training tokens that give the from-scratch student the distill + finetune FLOPs."""
    layers = model.decoder_layers()
    per_token, layer_tokens = [], []
    for key in distill.layers:
        cfg, i = distill.for_layer(key), int(key) - 1
        if not model.config.is_hyena(i):
            continue  # a kept attention layer is not trained
        mixer = model.mixer(i)
        per_token.append(distill_layer_flops_per_token(cfg.target, count_params(layers[i]), count_params(mixer), attention_params))
        steps = steps_per_run(n_distill_seqs, cfg.batch_size, cfg.epochs)
        layer_tokens.append(steps * cfg.batch_size * seq_len)
        if cfg.readout == "least_squares":  # solved once before the steps, and once more after any
            per_token.append(readout_flops_per_token(count_params(mixer), attention_params, mixer.d_model))
            layer_tokens.append((2 if steps else 1) * n_distill_seqs * seq_len)
    n_lm = lm_params(model)
    ft_steps = steps_for_epochs(n_finetune_seqs, finetune.batch_size, finetune.epochs, "finetune")
    ft_tokens = ft_steps * finetune.batch_size * ft_len
    flops = {"distill": distill_flops(per_token, layer_tokens), "finetune": lm_flops(n_lm, ft_tokens)}
    if finetune.kl_weight > 0 and finetune.kl_source == "online":
        # the teacher's forward pass every step (2N a token) is the recipe's compute too; cached
        # top-k logits come from the dump's forward pass, a sunk cost like the activations
        n_teacher = n_lm + sum(attention_params - count_params(model.mixer(i)) for i in model.hyena_layers())
        flops["finetune_teacher"] = 2.0 * n_teacher * ft_tokens
    return tokens_for_flops(sum(flops.values()), n_lm), flops


def count_params(module) -> int:
    return sum(p.numel() for p in module.parameters())


def teacher_attention_params(config) -> int:
    """Parameters of one of the teacher's attention blocks (built on the meta device: no memory)."""
    arch = config.teacher_architecture()
    with torch.device("meta"):
        teacher = AutoModelForCausalLM.from_config(arch)
    adapter = get_adapter(teacher)
    return sum(p.numel() for p in adapter.attention(adapter.layers(teacher)[0]).parameters())
