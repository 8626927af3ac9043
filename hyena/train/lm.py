"""Language-model training: CE fine-tuning of the distilled student, and the from-scratch baseline.

loss = CE(student) + kl_weight * T^2 * KL(teacher_T || student_T)   (KL optional, 0 by default)

Resumable: every `checkpoint_every` steps the model, optimiser and step go to `state_dir`
(safetensors for weights, `torch.load(weights_only=True)` for the optimiser: nothing is
unpickled); a rerun with the same fingerprint continues from there.
"""

from __future__ import annotations

import contextlib
import json
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_model, save_model
from tqdm.auto import tqdm

from hyena.operator import param_groups
from hyena.train.batches import epoch_batches, take
from hyena.train.dist import DistEnv, wrap
from hyena.train.schedule import warmup_decay

LogFn = Callable[[dict, int], None]


@dataclass
class LMConfig:
    max_steps: int
    lr: float = 6e-4
    min_lr_ratio: float = 0.1
    warmup_frac: float = 0.025
    decay_frac: float = 1.0
    betas: tuple[float, float] = (0.9, 0.98)
    weight_decay: float = 0.1
    filter_lr: float | None = None
    batch_size: int = 8  # global batch (sequences) per optimiser step
    micro_batch_size: int = 0  # sequences per forward on each rank (0: the whole local batch)
    kl_weight: float = 0.0
    kl_temperature: float = 1.0
    grad_clip: float = 1.0
    seed: int = 0
    log_every: int = 10
    checkpoint_every: int = 50
    val_batch_size: int = 4
    max_val_sequences: int = 0  # 0: the whole validation split

    def __post_init__(self) -> None:
        self.betas = tuple(self.betas)
        if self.max_steps < 1:
            raise ValueError(f"LM training needs at least one step (got max_steps={self.max_steps})")


def kl_to_teacher(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Mean over tokens of KL(teacher || student) at temperature T, scaled by T^2."""
    s = F.log_softmax(student_logits.float() / temperature, dim=-1)  # (B, L, V)
    t = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    kl = (t.exp() * (t - s)).sum(-1)  # (B, L)
    return kl.mean() * temperature**2


@torch.no_grad()
def lm_loss(model: nn.Module, tokens, env: DistEnv, batch_size: int, max_sequences: int = 0) -> float:
    """Mean next-token cross-entropy (nats/token) over the rows of `tokens` (n, L)."""
    n = tokens.shape[0] if max_sequences <= 0 else min(max_sequences, tokens.shape[0])
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


def _save_state(state_dir: Path, model: nn.Module, opt: torch.optim.Optimizer, step: int, fingerprint: str) -> None:
    tmp = state_dir.with_name(state_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_model(model, str(tmp / "model.safetensors"))
    torch.save(opt.state_dict(), tmp / "optimizer.pt")
    (tmp / "state.json").write_text(json.dumps({"step": step, "fingerprint": fingerprint}))
    shutil.rmtree(state_dir, ignore_errors=True)
    tmp.rename(state_dir)


def _load_state(state_dir: Path, model: nn.Module, opt: torch.optim.Optimizer, fingerprint: str) -> int:
    """The step to resume from (0 when there is no matching checkpoint)."""
    meta = state_dir / "state.json"
    if not meta.is_file():
        return 0
    state = json.loads(meta.read_text())
    if state.get("fingerprint") != fingerprint:
        return 0  # params or inputs changed: start over
    load_model(model, str(state_dir / "model.safetensors"))
    opt.load_state_dict(torch.load(state_dir / "optimizer.pt", weights_only=True))
    return int(state["step"])


def train_lm(
    model: nn.Module,
    train_tokens,
    val_tokens,
    cfg: LMConfig,
    env: DistEnv,
    teacher: nn.Module | None = None,
    log: LogFn | None = None,
    state_dir: str | Path | None = None,
    fingerprint: str = "",
) -> dict[str, float]:
    """Train a causal LM on packed token rows (n, L); returns validation loss/perplexity and costs."""
    torch.manual_seed(cfg.seed)
    model.to(env.device)
    model.requires_grad_(True)
    if cfg.kl_weight > 0 and teacher is None:
        raise ValueError("kl_weight > 0 needs a teacher")
    if teacher is not None:
        teacher.to(env.device).eval().requires_grad_(False)
    groups = param_groups(model, cfg.lr, cfg.weight_decay, cfg.filter_lr)
    opt = torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    state_dir = Path(state_dir) if state_dir else None
    start = _load_state(state_dir, model, opt, fingerprint) if state_dir else 0
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: warmup_decay(s, cfg.max_steps, cfg.warmup_frac, cfg.min_lr_ratio, cfg.decay_frac))
    for _ in range(start):
        sched.step()
    ddp = wrap(model, env)
    n, seq_len = train_tokens.shape
    per_epoch = n // cfg.batch_size
    epochs = math.ceil(cfg.max_steps / max(per_epoch, 1))
    local = env.local_slice(cfg.batch_size)
    local_n = local.stop - local.start
    micro = cfg.micro_batch_size or local_n
    val_before = lm_loss(model, val_tokens, env, cfg.val_batch_size, cfg.max_val_sequences) if start == 0 else math.nan
    model.train()
    t0, loss_ema = time.perf_counter(), math.nan
    bar = tqdm(total=cfg.max_steps, initial=start, desc="train", unit="step", disable=not env.is_main, dynamic_ncols=True, mininterval=2)
    batches = epoch_batches(n, cfg.batch_size, epochs, cfg.seed)
    for step, rows in enumerate(batches):
        if step >= cfg.max_steps:
            break
        if step < start:
            continue  # replay the batch order up to the checkpoint
        ids_all = torch.from_numpy(np.asarray(take(train_tokens, rows[local]), dtype=np.int64)).to(env.device)
        opt.zero_grad(set_to_none=True)
        step_loss = 0.0
        for m0 in range(0, local_n, micro):
            ids = ids_all[m0:m0 + micro]  # (b, L)
            frac = ids.shape[0] / local_n
            sync = m0 + micro >= local_n
            ctx = ddp.no_sync() if env.distributed and not sync else contextlib.nullcontext()
            with ctx, env.autocast():
                logits = ddp(input_ids=ids).logits  # (b, L, V)
                loss = F.cross_entropy(logits[:, :-1].float().flatten(0, 1), ids[:, 1:].flatten())
                if cfg.kl_weight > 0:
                    with torch.no_grad():
                        t_logits = teacher(input_ids=ids).logits
                    loss = loss + cfg.kl_weight * kl_to_teacher(logits[:, :-1], t_logits[:, :-1], cfg.kl_temperature)
            (loss * frac).backward()
            step_loss += loss.item() * frac
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        sched.step()
        if not math.isfinite(step_loss):
            raise RuntimeError(f"training diverged at step {step} (loss {step_loss}); lower the learning rate")
        loss_ema = step_loss if math.isnan(loss_ema) else 0.9 * loss_ema + 0.1 * step_loss
        bar.set_postfix(loss=f"{loss_ema:.4g}", lr=f"{sched.get_last_lr()[0]:.2e}")
        bar.update()
        if log is not None and (step % cfg.log_every == 0 or step == cfg.max_steps - 1):
            log({"train_loss": env.mean(step_loss), "lr": sched.get_last_lr()[0]}, step)
        if state_dir and env.is_main and (step + 1) % cfg.checkpoint_every == 0 and step + 1 < cfg.max_steps:
            _save_state(state_dir, model, opt, step + 1, fingerprint)
        env.barrier()
    bar.close()
    seconds = time.perf_counter() - t0
    val = lm_loss(model, val_tokens, env, cfg.val_batch_size, cfg.max_val_sequences)
    model.requires_grad_(False)
    return {
        "val_loss_before": val_before, "val_loss": val, "val_ppl": math.exp(min(val, 50.0)),
        "train_loss_final": loss_ema, "steps": cfg.max_steps, "resumed_from": start,
        "train_tokens": cfg.max_steps * cfg.batch_size * seq_len, "seconds": seconds,
    }
