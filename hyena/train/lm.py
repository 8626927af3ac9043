"""Language-model training: CE fine-tuning of the distilled student, and the from-scratch baseline.

loss = CE(student) + kl_weight * T^2 * KL(teacher_T || student_T)   (KL optional, 0 by default)

Resumable: every `checkpoint_every` steps the model, optimiser, step and run state (the validation
loss before training, every logged metric) go to a checkpoint directory (safetensors for weights,
`torch.load(weights_only=True)` for the optimiser: nothing is unpickled); a rerun whose fingerprint
(input model, config, tokens, code) is the same continues from there, any other starts over.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from hyena.core.config import param
from hyena.core.dist import DistEnv, wrap
from hyena.train.batches import LM_VAL_BATCH, epoch_batches, take
from hyena.train.checkpoint import DirCheckpoint
from hyena.train.loop import LogFn, run_steps
from hyena.train.optim import OptimConfig


@dataclass(frozen=True)
class Objective:
    """What a language-model training run minimises, and over which weights:
    ce_weight * cross-entropy + kl_weight * KL(teacher || student) at kl_temperature; `train`
    "all" (every weight) or "mixers" (only the Hyena mixers)."""
    ce_weight: float = 1.0
    kl_weight: float = 0.0
    kl_temperature: float = 1.0
    train: Literal["all", "mixers"] = "all"


@dataclass
class LMTrainConfig(OptimConfig):
    """Knobs of every cross-entropy training stage (fine-tune and from-scratch baseline)."""
    micro_batch_size: int = param(0, "sequences per forward per process (0: all; lower it if logits run out of memory)", ge=0)
    max_sequences: int = param(0, "first N training sequences (0: all)", ge=0)
    val_sequences: int = param(64, "validation sequences for the final loss (0: all)", ge=0)
    checkpoint_every: int = param(50, "steps between resumable checkpoints", ge=1)

    def objective(self) -> Objective:
        """Plain cross-entropy on every weight (the from-scratch baseline); the fine-tune has knobs."""
        return Objective()


@dataclass
class FinetuneConfig(LMTrainConfig):
    """params.yaml `finetune`: the cross-entropy fine-tune of the whole MSE-distilled student."""
    SECTION = "finetune"

    lr: float = param(6.0e-4, "peak learning rate", gt=0)
    readout_lr: float | None = param(
        None, "learning rate of the Hyena mixers' output projections (null: lr), e.g. to hold least-squares "
              "readouts (distill.readout) near their optimum while the rest of each mixer trains", gt=0)
    epochs: float = param(6.0, "passes over the training sequences (paper: 6 after 6 distillation epochs)", gt=0)
    train: Literal["all", "mixers"] = param("all", "all: every weight | mixers: only the Hyena mixers (embeddings, "
                                                   "norms and MLPs stay the teacher's)")
    ce_weight: float = param(1.0, "weight of the next-token cross-entropy", ge=0)
    kl_weight: float = param(0.0, "weight of KL(teacher || student) on next-token logits (0: pure CE, as the paper)", ge=0)
    kl_temperature: float = param(1.0, "temperature of that KL", gt=0)
    kl_source: Literal["cached", "online"] = param(
        "cached", "cached: the teacher's top-k logits from the dump (dump.logits_topk) | online: a teacher forward "
                  "pass every step (exact, ~1/3 more compute per step)")

    def objective(self) -> Objective:
        return Objective(self.ce_weight, self.kl_weight, self.kl_temperature, self.train)

    def readout_group_lr(self) -> float | None:
        return self.readout_lr

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.ce_weight == 0 and self.kl_weight == 0:
            raise ValueError("finetune.ce_weight and finetune.kl_weight are both 0: nothing to train on")


@dataclass
class PretrainConfig(LMTrainConfig):
    """params.yaml `pretrain`: the same student from random weights, the paper's baseline."""
    SECTION = "pretrain"

    budget: Literal["auto"] | int = param("auto", "auto: the FLOPs of distillation + fine-tuning (equal compute), or a token count", ge=1)


def kl_to_teacher(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Mean over tokens of KL(teacher || student) at temperature T, scaled by T^2."""
    s = F.log_softmax(student_logits.float() / temperature, dim=-1)  # (B, L, V)
    t = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    kl = (t.exp() * (t - s)).sum(-1)  # (B, L)
    return kl.mean() * temperature**2


def kl_to_teacher_topk(student_logits: torch.Tensor, values: torch.Tensor, ids: torch.Tensor,
                       temperature: float) -> torch.Tensor:
    """KL(teacher || student) at temperature T over the teacher's top k tokens (values, ids: (B, L, k)),
    the teacher's distribution renormalised over them; the student's log-probabilities are its
    full-vocabulary ones. Mean over tokens, scaled by T^2. With k covering most of the teacher's
    mass this is the full KL less the tail's share."""
    s = F.log_softmax(student_logits.float() / temperature, dim=-1).gather(-1, ids)  # (B, L, k)
    t = F.log_softmax(values.float() / temperature, dim=-1)  # (B, L, k)
    return (t.exp() * (t - s)).sum(-1).mean() * temperature**2


@torch.no_grad()
def lm_loss(model: nn.Module, tokens, env: DistEnv, batch_size: int = LM_VAL_BATCH) -> float:
    """Mean next-token cross-entropy (nats/token) over the rows of `tokens` (n, L)."""
    n = tokens.shape[0]
    total, count = 0.0, 0
    model.eval()
    for start in range(env.rank * batch_size, n, batch_size * env.world_size):
        ids = torch.from_numpy(np.asarray(tokens[start:min(start + batch_size, n)], dtype=np.int64)).to(env.device)
        with env.autocast():
            logits = model(input_ids=ids).logits
        nll = F.cross_entropy(logits[:, :-1].float().flatten(0, 1), ids[:, 1:].flatten(), reduction="sum")
        total += nll.item()
        count += ids[:, 1:].numel()
    if env.distributed:
        t = torch.tensor([total, count], dtype=torch.float64, device=env.device)
        torch.distributed.all_reduce(t)
        total, count = t.tolist()
    return total / max(count, 1)


def _recording(log: LogFn, history: list) -> LogFn:
    def record(metrics: dict, step: int) -> None:
        history.append([step, metrics])
        log(metrics, step)

    return record


def set_trainable(model: nn.Module, what: str) -> None:
    """Every weight ("all") or only the Hyena mixers ("mixers") of a student require gradients."""
    model.requires_grad_(what == "all")
    if what == "mixers":
        for i in model.hyena_layers():
            model.mixer(i).requires_grad_(True)


def objective_loss(logits: torch.Tensor, ids: torch.Tensor, objective: Objective, teacher: nn.Module | None = None,
                   top: tuple | None = None) -> torch.Tensor:
    """ce_weight * next-token cross-entropy of `logits` (b, L, V) on `ids` (b, L), plus kl_weight *
    KL(teacher || student): from `teacher` run on the same ids, or from `top` = (values, ids), its
    cached top-k logits of these rows."""
    loss = objective.ce_weight * F.cross_entropy(logits[:, :-1].float().flatten(0, 1), ids[:, 1:].flatten())
    if objective.kl_weight > 0 and teacher is not None:
        with torch.no_grad():
            t_logits = teacher(input_ids=ids).logits
        loss = loss + objective.kl_weight * kl_to_teacher(logits, t_logits, objective.kl_temperature)
    elif objective.kl_weight > 0:
        values, top_ids = top
        loss = loss + objective.kl_weight * kl_to_teacher_topk(logits, values, top_ids.long(), objective.kl_temperature)
    return loss


def _lm_step(ddp: nn.Module, train_tokens, objective: Objective, env: DistEnv, local: slice, micro: int,
             teacher: nn.Module | None, teacher_topk: tuple | None) -> Callable[[np.ndarray], float]:
    """One optimiser step's gradients for global batch `rows`: this rank's `local` share, in micro
    batches of `micro` (gradients synchronised on the last); returns the mean loss."""
    local_n = local.stop - local.start

    def step(rows: np.ndarray) -> float:
        rows = rows[local]
        ids_all = torch.from_numpy(np.asarray(take(train_tokens, rows), dtype=np.int64)).to(env.device)
        if objective.kl_weight > 0 and teacher is None:
            top_all = [torch.from_numpy(np.ascontiguousarray(take(a, rows))).to(env.device) for a in teacher_topk]
        total = 0.0
        for m0 in range(0, local_n, micro):
            ids = ids_all[m0:m0 + micro]  # (b, L)
            frac = ids.shape[0] / local_n
            sync = m0 + micro >= local_n
            ctx = ddp.no_sync() if env.distributed and not sync else contextlib.nullcontext()
            with ctx, env.autocast():
                logits = ddp(input_ids=ids).logits  # (b, L, V)
                top = tuple(t[m0:m0 + micro] for t in top_all) if objective.kl_weight > 0 and teacher is None else None
                loss = objective_loss(logits, ids, objective, teacher, top)
            (loss * frac).backward()
            total += loss.item() * frac
        return total

    return step


def train_lm(
    model: nn.Module,
    train_tokens,
    val_tokens,
    cfg: LMTrainConfig,
    steps: int,
    env: DistEnv,
    teacher: nn.Module | None = None,
    teacher_topk: tuple | None = None,
    log: LogFn | None = None,
    checkpoint: DirCheckpoint | None = None,
) -> dict[str, float]:
    """Train a causal LM on packed token rows (n, L) for `steps` optimiser steps; returns the
    validation loss/perplexity before and after, and costs.

    With an objective (`cfg.objective()`) whose kl_weight > 0 the loss adds the logit KL to the teacher: from
    `teacher` run online, or from `teacher_topk` = (values, ids), the teacher's top-k logits of the
    same rows (each (n, L, k), row-aligned with train_tokens)."""
    objective = cfg.objective()
    if steps < 1:
        raise ValueError(f"LM training needs at least one step (got {steps})")
    torch.manual_seed(cfg.seed)
    model.to(env.device)
    set_trainable(model, objective.train)
    if objective.kl_weight > 0 and teacher is None and teacher_topk is None:
        raise ValueError("kl_weight > 0 needs a teacher or its cached top-k logits")
    if teacher is not None:
        teacher.to(env.device).eval().requires_grad_(False)
    ddp = wrap(model, env)
    n, seq_len = train_tokens.shape
    epochs = math.ceil(steps / max(n // cfg.batch_size, 1))
    local = env.local_slice(cfg.batch_size)
    micro = cfg.micro_batch_size or (local.stop - local.start)
    resumed_at = checkpoint.resumable() if checkpoint is not None else 0
    run_state = checkpoint.state if resumed_at else {}
    val_before = run_state["val_loss_before"] if resumed_at else lm_loss(model, val_tokens, env)
    history: list = run_state.get("log", [])  # [step, metrics] of every logged step
    if checkpoint is not None:
        checkpoint.state.update(val_loss_before=val_before, log=history)
    if log is not None:
        for logged_step, metrics in history:  # the resumed run's curve starts where the run began
            log(metrics, logged_step)
        log = _recording(log, history)

    step = _lm_step(ddp, train_tokens, objective, env, local, micro, teacher, teacher_topk)

    model.train()
    run = run_steps(model, cfg, epoch_batches(n, cfg.batch_size, epochs, cfg.seed), steps, step, env, log=log,
                    checkpoint=checkpoint, checkpoint_every=cfg.checkpoint_every, clip_params=model.parameters())
    val = lm_loss(model, val_tokens, env)
    model.requires_grad_(False)
    return {
        "val_loss_before": val_before, "val_loss": val, "val_ppl": math.exp(min(val, 50.0)),
        "train_loss_final": run["train_loss_final"], "steps": steps, "resumed_from": run["resumed_from"],
        "train_tokens": steps * cfg.batch_size * seq_len, "seconds": run["seconds"],
    }
