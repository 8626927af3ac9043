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
from hyena.data.store import ActivationStore
from hyena.data.tokens import check_tokenizer
from hyena.model.cards import ModelCard
from hyena.model.modeling import HyenaStudentForCausalLM, HyenaStudentHFConfig
from hyena.teachers import teacher_record
from hyena.train.batches import steps_for_epochs
from hyena.train.budget import equal_compute_tokens, teacher_attention_params
from hyena.train.distill import DistillConfig
from hyena.train.lm import FinetuneConfig, PretrainConfig
from pipeline.lm_stage import load_split, run
from pipeline.params import PARAMS_OPTION, Params, StageError, command, stage_app

app = stage_app()


@command(app)
def main(params_file: Path = PARAMS_OPTION) -> None:
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
                                             teacher_attention_params(config))
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
