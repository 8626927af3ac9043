"""The one training-step skeleton that layer distillation and LM training share.

A trainer supplies its batches and a `step(batch) -> loss` that runs forward and backward; the loop
owns everything around it: AdamW and the LR schedule, gradient clipping, the divergence check,
the progress bar, the smoothed loss, logging every `log_every` steps and (optionally) resumable
checkpoints.
"""

from __future__ import annotations

import math
import re
import time
import warnings
from collections.abc import Callable, Iterable
from typing import Any, Protocol

import torch
import torch.nn as nn
from tqdm.auto import tqdm

from hyena.core.dist import DistEnv
from hyena.train.optim import OptimConfig, make_optimizer

LogFn = Callable[[dict, int], None]


class DivergedError(RuntimeError):
    """The training loss became NaN or infinite."""


class Checkpointer(Protocol):
    state: dict  # saved with every checkpoint and restored by load (the loop keeps its smoothed loss there)

    def load(self, opt: torch.optim.Optimizer) -> int: ...  # the step to resume from (0: none)
    def save(self, opt: torch.optim.Optimizer, step: int) -> None: ...


def run_steps(model: nn.Module, cfg: OptimConfig, batches: Iterable[Any], total: int,
              step: Callable[[Any], float], env: DistEnv, *, log: LogFn | None = None,
              metric: str = "train_loss", desc: str = "train", hint: str = "lower the learning rate",
              checkpoint: Checkpointer | None = None, checkpoint_every: int = 0,
              clip_params: Iterable[torch.Tensor] | None = None) -> dict:
    """Run `total` optimiser steps over `batches`; returns the smoothed final loss, steps, resume
    point and wall time. `step(batch)` must leave the gradients in place and return the loss."""
    opt, sched = make_optimizer(model, cfg, total)
    params = list(clip_params) if clip_params is not None else [p for g in opt.param_groups for p in g["params"]]
    start = checkpoint.load(opt) if checkpoint is not None else 0
    with warnings.catch_warnings():  # replaying the schedule before any optimiser step is intended
        warnings.filterwarnings("ignore", message=re.escape("Detected call of `lr_scheduler.step()`"))
        for _ in range(start):
            sched.step()
    t0, ema = time.perf_counter(), (checkpoint.state.get("smoothed_loss", math.nan) if start else math.nan)
    bar = tqdm(total=total, initial=start, desc=desc, unit="step", disable=not env.is_main,
               dynamic_ncols=True, mininterval=2)
    try:
        for i, batch in enumerate(batches):
            if i >= total:
                break
            if i < start:
                continue  # replay the batch order up to the checkpoint
            opt.zero_grad(set_to_none=True)
            value = step(batch)
            if not math.isfinite(value):
                raise DivergedError(f"training diverged at step {i} (loss {value}); {hint}")
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            opt.step()
            sched.step()
            ema = value if math.isnan(ema) else 0.9 * ema + 0.1 * value
            lr = sched.get_last_lr()[0]
            bar.set_postfix(loss=f"{ema:.4g}", lr=f"{lr:.2e}")
            bar.update()
            if log is not None and (i % cfg.log_every == 0 or i == total - 1):
                log({metric: env.mean(value), "lr": lr}, i)
            if checkpoint is not None and checkpoint_every and env.is_main \
                    and (i + 1) % checkpoint_every == 0 and i + 1 < total:
                checkpoint.state["smoothed_loss"] = ema
                checkpoint.save(opt, i + 1)
            env.barrier()
    finally:
        bar.close()  # before any error line, not after it
    return {"train_loss_final": ema, "steps": total, "resumed_from": start,
            "seconds": time.perf_counter() - t0}
