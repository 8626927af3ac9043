"""Layer distillation: train one student layer to reproduce the teacher's output of that layer.

Objective (Scavenging Hyena, Sec. 3): for layer i, minimise
    MSE(f_i^student(x_{i-1}), y_i^teacher)
where y_i is the teacher's cached output of layer i and x_{i-1} is either the frozen student's
own output of layer i-1 ("student": progressive, as in the paper) or the teacher's cached
output of layer i-1 ("teacher": teacher-forced, layers become independent). Only layer i
trains; layers < i are frozen (their outputs are cached, so they are not even run).

Llama-family teachers (SmolLM2) write a "massive activation" into the first position of every
sequence from a middle layer on (the attention sink: ~2e4 in one channel against ~60 elsewhere).
It then carries nearly all of the plain MSE, so the gradient spends itself on one token that a
student without attention has no use for. `skip_first=k` leaves the first k positions out of the
loss; `val_mse_after_first` (positions >= 1) is always reported to show what the rest looks like.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
from tqdm.auto import tqdm

from hyena.operator import param_groups
from hyena.train.batches import epoch_batches, load_all, steps_per_run, take, to_tensor
from hyena.train.dist import DistEnv, wrap
from hyena.train.schedule import warmup_decay

LogFn = Callable[[dict, int], None]


@dataclass
class DistillConfig:
    lr: float = 1e-3
    min_lr_ratio: float = 0.1
    warmup_frac: float = 0.025
    decay_frac: float = 1.0
    betas: tuple[float, float] = (0.9, 0.98)
    weight_decay: float = 0.1
    filter_lr: float | None = None  # None: same as lr
    batch_size: int = 8
    epochs: int = 2
    train: str = "mixer"  # "mixer": only the Hyena operator trains; "layer": the whole decoder layer
    skip_first: int = 0  # positions at the start of each sequence left out of the loss (0: plain MSE, the paper)
    grad_clip: float = 1.0
    seed: int = 0
    log_every: int = 10
    val_batch_size: int = 8
    ram_bytes: int = 4 << 30  # arrays up to this size are read into memory once

    def __post_init__(self) -> None:
        if self.train not in ("mixer", "layer"):
            raise ValueError(f"distill.train must be 'mixer' or 'layer' (got {self.train!r})")
        if self.skip_first < 0:
            raise ValueError(f"distill.skip_first must be >= 0 (got {self.skip_first})")
        self.betas = tuple(self.betas)


class LayerOnly(nn.Module):
    """A decoder layer called on hidden states alone (Hyena mixers need no positions or masks)."""

    def __init__(self, layer: nn.Module):
        super().__init__()
        self.layer = layer

    def forward(self, h: torch.Tensor) -> torch.Tensor:  # (B, L, d) -> (B, L, d)
        out = self.layer(h)
        return out[0] if isinstance(out, tuple) else out


def set_trainable(layer: nn.Module, mixer: nn.Module, what: str) -> None:
    layer.requires_grad_(what == "layer")
    mixer.requires_grad_(True)


@torch.no_grad()
def layer_mse(fn: nn.Module, inputs, targets, env: DistEnv, batch_size: int) -> dict[str, float]:
    """Mean squared error over all elements, the same normalised by the targets' mean square, and
    the MSE over positions >= 1 (without the first position, where attention sinks live)."""
    sq_err, sq_tgt, count, sq_rest, count_rest = 0.0, 0.0, 0, 0.0, 0
    n = inputs.shape[0]
    mine = range(env.rank * batch_size, n, batch_size * env.world_size)  # ranks split the rows
    for start in mine:
        rows = np.arange(start, min(start + batch_size, n))
        x = to_tensor(take(inputs, rows), env.device)
        y = to_tensor(take(targets, rows), env.device)
        with env.autocast():
            out = fn(x)
        sq = (out.double() - y.double()).pow(2)  # (b, L, d); float64: a 2e4 outlier must not swamp the rest
        sq_err += sq.sum().item()
        sq_rest += sq[:, 1:].sum().item()  # summed apart, not by subtraction, for the same reason
        sq_tgt += y.double().pow(2).sum().item()
        count += y.numel()
        count_rest += y[:, 1:].numel()
    if env.distributed:
        t = torch.tensor([sq_err, sq_tgt, count, sq_rest, count_rest], dtype=torch.float64, device=env.device)
        torch.distributed.all_reduce(t)
        sq_err, sq_tgt, count, sq_rest, count_rest = t.tolist()
    return {"mse": sq_err / max(count, 1), "nmse": sq_err / max(sq_tgt, 1e-30),
            "mse_after_first": sq_rest / max(count_rest, 1)}


def distill_layer(
    layer: nn.Module,
    mixer: nn.Module,
    train_inputs,
    train_targets,
    val_inputs,
    val_targets,
    cfg: DistillConfig,
    env: DistEnv,
    log: LogFn | None = None,
) -> dict[str, float]:
    """Train `layer` (or only its `mixer`) by MSE; returns validation MSE before and after, and costs.

    Arrays are (n, L, d), numpy or Zarr; row k of inputs and targets are the same sequence.
    """
    if train_inputs.shape != train_targets.shape:
        raise ValueError(f"inputs {train_inputs.shape} and targets {train_targets.shape} differ in shape")
    torch.manual_seed(cfg.seed)
    train_inputs = load_all(train_inputs, cfg.ram_bytes // 2)
    train_targets = load_all(train_targets, cfg.ram_bytes // 2)
    fn = LayerOnly(layer).to(env.device)
    set_trainable(layer, mixer, cfg.train)
    before = layer_mse(fn.eval(), val_inputs, val_targets, env, cfg.val_batch_size)

    model = wrap(fn, env)
    groups = param_groups(fn, cfg.lr, cfg.weight_decay, cfg.filter_lr)
    opt = torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    n, seq_len = train_inputs.shape[0], train_inputs.shape[1]
    total = steps_per_run(n, cfg.batch_size, cfg.epochs)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: warmup_decay(s, total, cfg.warmup_frac, cfg.min_lr_ratio, cfg.decay_frac))
    local = env.local_slice(cfg.batch_size)
    fn.train()
    t0, loss_ema = time.perf_counter(), math.nan
    bar = tqdm(total=total, desc="distill", unit="step", disable=not env.is_main, dynamic_ncols=True, mininterval=2)
    for step, rows in enumerate(epoch_batches(n, cfg.batch_size, cfg.epochs, cfg.seed)):
        rows = rows[local]
        x = to_tensor(take(train_inputs, rows), env.device)  # (b, L, d)
        y = to_tensor(take(train_targets, rows), env.device)  # (b, L, d)
        with env.autocast():
            out = model(x)
        loss = nn.functional.mse_loss(out[:, cfg.skip_first:].float(), y[:, cfg.skip_first:])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_([p for g in groups for p in g["params"]], cfg.grad_clip)
        opt.step()
        sched.step()
        value = loss.item()
        loss_ema = value if math.isnan(loss_ema) else 0.9 * loss_ema + 0.1 * value
        bar.set_postfix(loss=f"{loss_ema:.4g}", lr=f"{sched.get_last_lr()[0]:.2e}")
        bar.update()
        if log is not None and (step % cfg.log_every == 0 or step == total - 1):
            log({"train_mse": env.mean(value), "lr": sched.get_last_lr()[0]}, step)
        if not math.isfinite(value):
            raise RuntimeError(f"distillation diverged at step {step} (loss {value}); lower distill.lr")
    bar.close()
    seconds = time.perf_counter() - t0
    fn.eval()
    after = layer_mse(fn, val_inputs, val_targets, env, cfg.val_batch_size)
    layer.requires_grad_(False)
    return {
        "val_mse_before": before["mse"], "val_mse": after["mse"],
        "val_nmse_before": before["nmse"], "val_nmse": after["nmse"],
        "val_mse_after_first_before": before["mse_after_first"], "val_mse_after_first": after["mse_after_first"],
        "train_mse_final": loss_ema, "steps": total,
        "train_tokens": total * cfg.batch_size * seq_len, "seconds": seconds,
    }


@torch.no_grad()
def layer_outputs(layer: nn.Module, inputs, env: DistEnv, batch_size: int, write: Callable[[int, np.ndarray], None],
                  dtype=np.float16) -> None:
    """Run a (frozen) layer over every row of `inputs` and hand each output batch to `write(start, out)`."""
    fn = LayerOnly(layer).to(env.device).eval()
    n = inputs.shape[0]
    for start in tqdm(range(0, n, batch_size), desc="layer outputs", unit="batch", disable=not env.is_main):
        rows = np.arange(start, min(start + batch_size, n))
        with env.autocast():
            out = fn(to_tensor(take(inputs, rows), env.device))
        write(start, out.float().cpu().numpy().astype(dtype))
