"""What the `finetune` and `pretrain` stages share: token loading, training, saving, metrics."""

from __future__ import annotations

import hashlib
import json
import math
import shutil
from dataclasses import asdict
from pathlib import Path

import typer

from pipeline.params import PathsConfig, StageError, dvclive_logger, split_timings, write_metrics


def load_split(tokens: str | Path, split: str, limit: int = 0):
    from hyena.data import load_tokens

    arr = load_tokens(tokens, split)
    return arr[:limit] if limit > 0 else arr


def fingerprint(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def run(stage: str, model, cfg, steps: int, p: PathsConfig, out: Path, tokenizer_from: Path,
        teacher=None, teacher_topk=None, extra_metrics: dict | None = None, fp_parts=(), card=None) -> dict:
    """Train `model` for `steps` optimiser steps, save it (HF format, atomic) with a model card
    extending `card` (default: the card of `tokenizer_from`, the directory the model came from),
    and write metrics."""
    from hyena.cards import ModelCard
    from hyena.data import load_manifest
    from hyena.io import atomic_dir
    from hyena.teachers import copy_tokenizer
    from hyena.train.dist import setup, teardown
    from hyena.train.lm import DirCheckpoint, train_lm

    train = load_split(p.tokens, "train", cfg.max_sequences)
    val = load_split(p.tokens, "val", cfg.val_sequences)
    if len(val) == 0:
        raise StageError(f"no validation sequences in {p.tokens}: raise tokenize.val_fraction")
    env = setup(precision=cfg.precision)
    fp = fingerprint(stage, asdict(cfg), steps, load_manifest(p.tokens).get("content_hash"), *fp_parts)
    log = dvclive_logger(p.dvclive(stage)) if env.is_main else None
    state_dir = Path(p.checkpoints) / stage
    result = train_lm(model, train, val, cfg, steps, env, teacher=teacher, teacher_topk=teacher_topk, log=log,
                      checkpoint=DirCheckpoint(state_dir, model, fp))
    if env.is_main:
        model.cpu()
        metrics, timing = split_timings({**result, **(extra_metrics or {})})
        known = {k: v for k, v in metrics.items() if k.startswith(("val_", "budget_", "flops_"))
                 and isinstance(v, (int, float)) and math.isfinite(v)}
        card = (card or ModelCard.of(tokenizer_from, model)).derive(
            Path(out).name, {stage: asdict(cfg)}, {stage: result["train_tokens"]}, known)
        with atomic_dir(out) as tmp:
            model.save_pretrained(tmp)
            copy_tokenizer(tokenizer_from, tmp)
            card.write(tmp, model, str(out))
        write_metrics(p.metrics(stage), metrics)
        write_metrics(p.timing(stage), timing)
        typer.echo(f"{stage}: val loss {result['val_loss_before']:.4f} -> {result['val_loss']:.4f} "
                   f"(ppl {result['val_ppl']:.2f}), {steps} steps, {result['train_tokens']:,} tokens, "
                   f"{result['seconds']:.0f}s -> {out}")
        shutil.rmtree(state_dir, ignore_errors=True)  # done: no resume needed
    env.barrier()
    teardown(env)
    return result


def steps_for_epochs(n_sequences: int, batch_size: int, epochs: float) -> int:
    if n_sequences < batch_size:
        raise StageError(f"batch_size {batch_size} exceeds the {n_sequences} training sequences")
    return max(1, math.ceil(epochs * (n_sequences // batch_size)))
