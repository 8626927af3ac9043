"""What the `finetune` and `pretrain` stages share: LM params, token loading, training, saving."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from pathlib import Path

import typer

from pipeline.common import StageError, dvclive_logger, write_metrics


@dataclasses.dataclass
class LMParams:
    lr: float = 6e-4  # peak learning rate
    filter_lr: float | None = None  # implicit-filter learning rate (null: same as lr)
    min_lr_ratio: float = 0.1  # decay floor as a fraction of lr
    warmup_frac: float = 0.025  # linear warm-up share of the steps
    decay_frac: float = 1.0  # cosine decay ends at this share of the steps, then constant
    betas: list = dataclasses.field(default_factory=lambda: [0.9, 0.98])  # AdamW betas
    weight_decay: float = 0.1  # AdamW weight decay (none on the filter, biases and norms)
    batch_size: int = 8  # sequences per optimiser step, global over all processes
    micro_batch_size: int = 0  # sequences per forward on each process (0: whole local batch)
    epochs: float = 1.0  # passes over the training tokens (finetune); ignored when budget sets steps
    max_sequences: int = 0  # use only the first N training sequences (0: all)
    val_sequences: int = 64  # validation sequences for the loss at the end (0: all)
    kl_weight: float = 0.0  # weight of KL(teacher || student) on next-token logits (0: CE only)
    kl_temperature: float = 1.0  # softmax temperature of the logit KL
    grad_clip: float = 1.0  # max gradient norm (0: off)
    seed: int = 0  # data order and initialisation
    log_every: int = 5  # steps between logged losses
    checkpoint_every: int = 50  # steps between resumable checkpoints (data/checkpoints/<stage>)
    budget: str | int = "auto"  # pretrain only: "auto" = distill + finetune compute, or a token count


def load_split(tokens: Path, split: str, limit: int = 0):
    from hyena.data import load_tokens

    arr = load_tokens(tokens, split)
    return arr[:limit] if limit > 0 else arr


def fingerprint(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def run(stage: str, model, p: LMParams, steps: int, tokens: Path, out: Path, reports: Path,
        teacher=None, extra_metrics: dict | None = None, fp_parts=()) -> dict:
    """Train `model` for `steps` optimiser steps, save it (HF format, atomic), write metrics."""
    from hyena.data import load_manifest
    from hyena.io import atomic_dir
    from hyena.train.dist import setup, teardown
    from hyena.train.lm import LMConfig, train_lm

    train = load_split(tokens, "train", p.max_sequences)
    val = load_split(tokens, "val", p.val_sequences)
    if len(val) == 0:
        raise StageError(f"no validation sequences in {tokens}: raise tokenize.val_fraction")
    env = setup()
    cfg = LMConfig(max_steps=steps, lr=p.lr, min_lr_ratio=p.min_lr_ratio, warmup_frac=p.warmup_frac,
                   decay_frac=p.decay_frac, betas=tuple(p.betas), weight_decay=p.weight_decay,
                   filter_lr=p.filter_lr, batch_size=p.batch_size, micro_batch_size=p.micro_batch_size,
                   kl_weight=p.kl_weight, kl_temperature=p.kl_temperature, grad_clip=p.grad_clip,
                   seed=p.seed, log_every=p.log_every, checkpoint_every=p.checkpoint_every)
    fp = fingerprint(stage, dataclasses.asdict(p), steps, load_manifest(tokens).get("content_hash"), *fp_parts)
    log = dvclive_logger(reports / "dvclive" / stage) if env.is_main else None
    result = train_lm(model, train, val, cfg, env, teacher=teacher, log=log,
                      state_dir=Path("data/checkpoints") / stage, fingerprint=fp)
    if env.is_main:
        model.cpu()
        with atomic_dir(out) as tmp:
            model.save_pretrained(tmp)
        metrics = {**result, **(extra_metrics or {})}
        write_metrics(reports / "metrics" / f"{stage}.json", metrics)
        typer.echo(f"{stage}: val loss {result['val_loss_before']:.4f} -> {result['val_loss']:.4f} "
                   f"(ppl {result['val_ppl']:.2f}), {steps} steps, {result['train_tokens']:,} tokens, "
                   f"{result['seconds']:.0f}s -> {out}")
        import shutil

        shutil.rmtree(Path("data/checkpoints") / stage, ignore_errors=True)  # done: no resume needed
    env.barrier()
    teardown(env)
    return result


def steps_for_epochs(n_sequences: int, batch_size: int, epochs: float) -> int:
    if n_sequences < batch_size:
        raise StageError(f"batch_size {batch_size} exceeds the {n_sequences} training sequences")
    return max(1, math.ceil(epochs * (n_sequences // batch_size)))
