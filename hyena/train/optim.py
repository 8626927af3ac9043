"""What every trainer optimises with: the shared knobs, AdamW parameter groups and the LR schedule."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn as nn

from hyena.core.config import Config, param
from hyena.model.multihyena import MultiHyenaOperator
from hyena.model.operator import HyenaOperator
from hyena.train.schedule import warmup_decay


@dataclass
class OptimConfig(Config):
    """The optimisation knobs distillation, fine-tuning and pre-training share (paper defaults)."""

    lr: float = param(1.0e-3, "peak learning rate (paper's best: 1e-3)", gt=0)
    filter_lr: float | None = param(None, "implicit filter learning rate (null: lr)", gt=0)
    min_lr_ratio: float = param(0.1, "decay floor, as a fraction of lr (paper: 10%)", ge=0, le=1)
    warmup_frac: float = param(0.025, "linear warm-up share of the steps (paper: 2.5%)", ge=0, le=1)
    decay_frac: float = param(1.0, "the cosine decay ends at this share of the steps, then the LR stays constant", gt=0)
    betas: tuple[float, float] = param((0.9, 0.98), "AdamW betas (paper)")
    weight_decay: float = param(0.1, "AdamW weight decay (paper); none on the filter, biases and norms", ge=0)
    batch_size: int = param(60, "sequences per optimiser step, global over processes (paper: 60)", ge=1)
    grad_clip: float = param(1.0, "max gradient norm (0: off)", ge=0)
    seed: int = param(0, "data order (and any initialisation)")
    log_every: int = param(5, "steps between logged training losses", ge=1)
    precision: Literal["auto", "fp32", "bf16"] = param(
        "auto", "matmul precision: auto (bf16 autocast on a GPU that supports it, fp32 on CPU) | fp32 | bf16 "
                "(autocast, CPU included: ~2x the fp32 matmul rate on CPUs with avx512_bf16); the FFT stays fp32")

    def readout_group_lr(self) -> float | None:
        """The learning rate of the Hyena mixers' output projections as a group of their own
        (`param_groups`), None for none: only the fine-tune has that knob (FinetuneConfig.readout_lr)."""
        return None

    def __post_init__(self) -> None:
        super().__post_init__()
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"{self.SECTION or 'optim'}.betas must be two numbers in [0, 1), got {list(self.betas)}")


def param_groups(model: nn.Module, lr: float, weight_decay: float, filter_lr: float | None = None,
                 filter_weight_decay: float = 0.0, readout_lr: float | None = None) -> list[dict]:
    """AdamW groups: implicit-filter parameters get their own lr and no weight decay (as the
    reference Hyena trains them); other matrices decay; biases, norms and embeddings' 1-D
    parameters do not. With `readout_lr`, the Hyena mixers' output projections form a group of
    their own at that lr and without decay (a least-squares readout is already the MSE optimum:
    it should move slowly, and decay would pull it off). Frozen parameters are left out."""
    readout = set()
    if readout_lr is not None:
        readout = {id(p) for m in model.modules() if isinstance(m, (HyenaOperator, MultiHyenaOperator))
                   for p in m.out_proj.parameters()}
    filt, decay, no_decay, read = [], [], [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if id(p) in readout:
            read.append(p)
        elif ".filter_fn." in f".{name}":
            filt.append(p)
        elif p.ndim >= 2:
            decay.append(p)
        else:
            no_decay.append(p)
    groups = [
        {"params": decay, "lr": lr, "weight_decay": weight_decay, "name": "decay"},
        {"params": no_decay, "lr": lr, "weight_decay": 0.0, "name": "no_decay"},
        {"params": filt, "lr": filter_lr if filter_lr is not None else lr,
         "weight_decay": filter_weight_decay, "name": "filter"},
        {"params": read, "lr": readout_lr, "weight_decay": 0.0, "name": "readout"},
    ]
    return [g for g in groups if g["params"]]


def make_optimizer(model: nn.Module, cfg: OptimConfig, total_steps: int):
    """(AdamW over `param_groups`, LambdaLR with the paper's warm-up + cosine-to-floor schedule)."""
    groups = param_groups(model, cfg.lr, cfg.weight_decay, cfg.filter_lr, readout_lr=cfg.readout_group_lr())
    if not groups:
        raise ValueError("nothing to train: every parameter is frozen")
    opt = torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: warmup_decay(s, total_steps, cfg.warmup_frac, cfg.min_lr_ratio, cfg.decay_frac))
    return opt, sched
