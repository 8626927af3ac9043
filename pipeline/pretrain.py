"""Stage `pretrain`: the same Hyena student from random initialisation, trained by cross-entropy.

The paper's "pre-trained" baseline. With `budget: auto` it gets the training compute of
distillation (every layer) plus fine-tuning, in FLOPs (see hyena/train/budget.py), so the
comparison with the distilled student is at equal compute.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import typer

from hyena.core.io import file_sha256
from pipeline.lm_stage import load_split, run, steps_for_epochs
from pipeline.params import PARAMS_OPTION, Params, StageError, command, stage_app

app = stage_app()


def equal_compute_tokens(model, distill, n_distill_seqs: int, seq_len: int,
                         finetune, n_finetune_seqs: int, ft_len: int, attention_params: int) -> tuple[int, dict]:
    """Training tokens that give the from-scratch student the distill + finetune FLOPs."""
    from hyena.train.batches import steps_per_run
    from hyena.train.budget import (
        distill_flops,
        distill_layer_flops_per_token,
        lm_flops,
        lm_params,
        readout_flops_per_token,
        tokens_for_flops,
    )

    layers = model.decoder_layers()
    per_token, layer_tokens = [], []
    for key in distill.layers:
        cfg, i = distill.for_layer(key), int(key) - 1
        if not model.config.is_hyena(i):
            continue  # a kept attention layer is not trained
        mixer = model.mixer(i)
        per_token.append(distill_layer_flops_per_token(cfg.target, _count(layers[i]), _count(mixer), attention_params))
        steps = steps_per_run(n_distill_seqs, cfg.batch_size, cfg.epochs)
        layer_tokens.append(steps * cfg.batch_size * seq_len)
        if cfg.readout == "least_squares":  # solved once before the steps, and once more after any
            per_token.append(readout_flops_per_token(_count(mixer), attention_params, mixer.d_model))
            layer_tokens.append((2 if steps else 1) * n_distill_seqs * seq_len)
    n_lm = lm_params(model)
    ft_steps = steps_for_epochs(n_finetune_seqs, finetune.batch_size, finetune.epochs, "finetune")
    ft_tokens = ft_steps * finetune.batch_size * ft_len
    flops = {"distill": distill_flops(per_token, layer_tokens), "finetune": lm_flops(n_lm, ft_tokens)}
    if finetune.kl_weight > 0 and finetune.kl_source == "online":
        # the teacher's forward pass every step (2N a token) is the recipe's compute too; cached
        # top-k logits come from the dump's forward pass, a sunk cost like the activations
        n_teacher = n_lm + sum(attention_params - _count(model.mixer(i)) for i in model.hyena_layers())
        flops["finetune_teacher"] = 2.0 * n_teacher * ft_tokens
    return tokens_for_flops(sum(flops.values()), n_lm), flops


def _count(module) -> int:
    return sum(p.numel() for p in module.parameters())


def _attention_params(config) -> int:
    """Parameters of one of the teacher's attention blocks (built on the meta device: no memory)."""
    from transformers import AutoModelForCausalLM

    from hyena.teachers import get_adapter

    arch = config.teacher_architecture()
    with torch.device("meta"):
        teacher = AutoModelForCausalLM.from_config(arch)
    adapter = get_adapter(teacher)
    return sum(p.numel() for p in adapter.attention(adapter.layers(teacher)[0]).parameters())


@command(app)
def main(params_file: Path = PARAMS_OPTION) -> None:
    from hyena.data.corpus import check_tokenizer
    from hyena.data.store import ActivationStore
    from hyena.model.cards import ModelCard
    from hyena.model.modeling import HyenaStudentForCausalLM, HyenaStudentHFConfig
    from hyena.teachers import teacher_record
    from hyena.train.distill import DistillConfig
    from hyena.train.lm import FinetuneConfig, PretrainConfig

    params = Params.read(params_file)
    cfg, p = params.get("pretrain", PretrainConfig), params.paths
    if not (p.layer("00") / "config.json").is_file():
        raise StageError(f"student config not found: {p.layer('00')}/config.json (run the init-student stage)")
    check_tokenizer(p.tokens, params.teacher_dir(), "the teacher")
    train = load_split(p.tokens, "train", cfg.max_sequences)
    seq_len = train.shape[1]
    steps_for_epochs(len(train), cfg.batch_size, 1, "pretrain")  # enough sequences for one batch
    config = HyenaStudentHFConfig.from_pretrained(p.layer("00"))
    config.init = "random"
    torch.manual_seed(cfg.seed)
    model = HyenaStudentForCausalLM(config)  # every weight random, embeddings included
    if cfg.budget == "auto":
        acts = ActivationStore.open(p.activations)
        ft = params.get("finetune", FinetuneConfig)
        n_ft = len(load_split(p.tokens, "train", ft.max_sequences))
        budget, flops = equal_compute_tokens(model, params.get("distill", DistillConfig),
                                             acts.n_sequences("train"), acts.seq_len, ft, n_ft, seq_len,
                                             _attention_params(config))
    else:
        budget, flops = cfg.budget, {}
    steps = max(1, math.ceil(budget / (cfg.batch_size * seq_len)))
    typer.echo(f"pretrain budget: {budget:,} tokens = {steps} steps of {cfg.batch_size} x {seq_len} "
               f"({'equal compute: ' + ', '.join(f'{k} {v:.3g} FLOPs' for k, v in flops.items()) if flops else 'explicit'})")
    extra = {"budget_tokens": budget, **{f"flops_{k}": v for k, v in flops.items()}}
    card = ModelCard("pretrained", teacher_record(params.teacher_dir()), params.recipe("student", "tokenize"))
    inputs = {"student_config": file_sha256(p.layer("00") / "config.json"), "budget": str(budget)}  # weights: random
    run("pretrain", model, cfg, steps, p, p.student("pretrained"), params.teacher_dir(), inputs=inputs,
        extra_metrics=extra, card=card)


if __name__ == "__main__":
    app()
