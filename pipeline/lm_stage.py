"""What the `finetune` and `pretrain` stages share: token loading, training, saving, metrics."""

from __future__ import annotations

import math
import shutil
from dataclasses import asdict
from pathlib import Path

import typer

import hyena
import pipeline
from hyena.core.dist import setup, teardown
from hyena.core.io import atomic_dir, claim_output, reading_weights
from hyena.data.tokens import check_tokenizer, load_manifest, load_tokens
from hyena.model.cards import ModelCard
from hyena.model.modeling import HyenaStudentForCausalLM
from hyena.teachers import copy_tokenizer
from hyena.train.checkpoint import DirCheckpoint, checkpoint_dir, code_version, digest
from hyena.train.lm import train_lm
from pipeline.params import PathsConfig, StageError, dvclive_logger, split_timings, write_metrics


def load_split(tokens: str | Path, split: str, limit: int = 0):
    arr = load_tokens(tokens, split)
    return arr[:limit] if limit > 0 else arr


def load_input_student(path: Path, tokens: str | Path, fix: str):
    """The student a training stage starts from, checked: present, readable, and made for the
    tokenizer of the token rows it will train on."""
    if not (Path(path) / "config.json").is_file():
        raise StageError(f"input student not found: {path} has no config.json ({fix})")
    with reading_weights(path, fix):  # a damaged config.json may already fail the tokenizer's load
        check_tokenizer(tokens, path, "the student")
        return HyenaStudentForCausalLM.from_pretrained(path)


def run(stage: str, model, cfg, steps: int, p: PathsConfig, out: Path, tokenizer_from: Path,
        inputs: dict[str, str], teacher=None, teacher_topk=None, extra_metrics: dict | None = None,
        card=None) -> dict:
    """Train `model` for `steps` optimiser steps, save it (HF format, atomic) with a model card
    extending `card` (default: the card of `tokenizer_from`, the directory the model came from),
    and write metrics.

    `inputs` names what the model was made from (e.g. the input model's hash): with the config,
    the tokens, the code and the output path it decides whether a checkpoint may be resumed."""
    train = load_split(p.tokens, "train", cfg.max_sequences)
    val = load_split(p.tokens, "val", cfg.val_sequences)
    if len(val) == 0:
        raise StageError(f"no validation sequences in {p.tokens}: raise tokenize.val_fraction")
    env = setup(precision=cfg.precision)
    if env.is_main:
        claim_output(out, stage)
    fingerprint = {"config": digest(asdict(cfg), steps), "tokens": load_manifest(p.tokens).get("content_hash", ""),
                   "code": code_version(Path(hyena.__file__).parent, Path(pipeline.__file__).parent),
                   "output": str(Path(out).resolve()), **inputs}
    log = dvclive_logger(p.dvclive(stage)) if env.is_main else None
    state_dir = checkpoint_dir(p.checkpoints, stage, out)
    say = (lambda line: typer.echo(f"{stage}: {line}", err=True)) if env.is_main else (lambda line: None)
    result = train_lm(model, train, val, cfg, steps, env, teacher=teacher, teacher_topk=teacher_topk, log=log,
                      checkpoint=DirCheckpoint(state_dir, model, fingerprint, say=say))
    if env.is_main:
        model.cpu()
        metrics, timing = split_timings({**result, **(extra_metrics or {})})
        known = {k: v for k, v in metrics.items() if k.startswith(("val_", "budget_", "flops_"))
                 and isinstance(v, (int, float)) and math.isfinite(v)}
        card = (card or ModelCard.of(tokenizer_from, model)).derive(
            Path(out).name, {stage: asdict(cfg)}, {stage: result["train_tokens"]}, known)
        with atomic_dir(out, stage) as tmp:
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
