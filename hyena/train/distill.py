"""Layer distillation: train one student layer to reproduce the teacher's layer.

Objective (Scavenging Hyena, Sec. 3, `target: layer_output`): for layer i, minimise
    MSE(f_i^student(x_{i-1}), y_i^teacher)
where y_i is the teacher's cached output of layer i and x_{i-1} is either the frozen student's
own output of layer i-1 ("student": progressive, as in the paper) or the teacher's cached
output of layer i-1 ("teacher": teacher-forced, layers become independent). Only layer i
trains; layers < i are frozen (their outputs are cached, so they are not even run).

Attention transfer (`target: mixer_output`, after LoLCATs / MOHAWK / RADLADS): minimise
    MSE(hyena_i(norm_i(x_{i-1})), attention_i^teacher(norm_i(x_{i-1})))
the mixer's output against what the teacher's attention adds to the residual stream on the same
input, computed on the fly from the teacher (no extra disk). Only the mixer runs forward and
backward, not the MLP, and the loss is free of everything the MLP does to the residual stream.

Llama-family teachers (SmolLM2) write a "massive activation" into the first position of every
sequence from a middle layer on (the attention sink: ~2e4 in one channel against ~60 elsewhere).
It then carries nearly all of the plain MSE, so the gradient spends itself on one token that a
student without attention has no use for. `skip_first=k` leaves the first k positions out of the
loss; `val_mse_after_first` (positions >= 1) is always reported to show what the rest looks like.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn as nn
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from hyena.core.config import ConfigError, load, param
from hyena.core.dist import DistEnv, wrap
from hyena.core.io import atomic_write_json, file_sha256
from hyena.core.runtime import first_output
from hyena.data.store import write_outputs
from hyena.teachers import attention_output, load_teacher
from hyena.train.batches import VAL_BATCH, epoch_batches, load_all, steps_per_run, take, to_tensor
from hyena.train.loop import LogFn, run_steps
from hyena.train.optim import OptimConfig

RAM_BYTES = 4 << 30  # training arrays up to this size (inputs + targets) are read into memory once
NOT_PER_LAYER = ("layers", "last", "log_every")  # knobs a layer entry cannot override


@dataclass
class DistillConfig(OptimConfig):
    """params.yaml `distill`: how each decoder layer is distilled (one DVC stage per layer)."""
    SECTION = "distill"

    input: Literal["student", "teacher"] = param(
        "student", "student: progressive, the frozen student's own layer i-1 output (paper) | teacher: teacher-forced")
    target: Literal["layer_output", "mixer_output"] = param(
        "layer_output", "layer_output: the teacher's layer output (paper) | mixer_output: the teacher attention's "
                        "output on the same input (attention transfer)")
    train: Literal["mixer", "layer"] = param("mixer", "mixer: only the Hyena operator trains | layer: the whole "
                                                      "decoder layer (layer_output target only)")
    skip_first: int = param(0, "first positions of each sequence left out of the MSE (1 drops the attention-sink "
                               "outlier of Llama teachers; 0: the paper)", ge=0)
    epochs: int = param(8, "passes over the dumped sequences, per layer (paper: 8; 0: no gradient steps, e.g. "
                           "after a least-squares readout)", ge=0)
    readout: Literal["none", "least_squares"] = param(
        "none", "least_squares: solve the mixer's output projection and bias in closed form (ridge least squares of "
                "its gated features onto the target; mixer_output target only) before the gradient steps, which then "
                "train the rest of the mixer with the readout frozen, and again after them")
    ridge: float = param(1e-3, "ridge of that solve, relative to the mean diagonal of the features' Gram matrix", ge=0)
    layers: dict[str, dict[str, Any]] = param(
        {f"{i:02d}": {"prev": f"{i - 1:02d}"} for i in range(1, 7)}, "one DVC stage per entry (foreach); prev: the layer feeding it. Add e.g. `lr: 5.0e-4` to an "
            "entry to override a knob for that layer only (reruns that layer and the ones above it)")
    last: str = param("06", "the last key of layers (DVC templating cannot compute it)")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.target == "mixer_output" and self.train == "layer":
            raise ValueError("distill.train: layer needs target layer_output (the mixer_output loss does not reach the MLP)")
        if self.readout == "least_squares" and self.target != "mixer_output":
            raise ValueError("distill.readout: least_squares needs target mixer_output (the readout's target is the "
                             "attention output)")

    def for_layer(self, key: str) -> DistillConfig:
        """The config of layer `key`: the global knobs with that layer's overrides applied."""
        if key not in self.layers:
            raise ConfigError(f"distill.layers has no layer {key!r} (has {', '.join(self.layers) or 'none'})")
        entry = dict(self.layers[key] or {})
        entry.pop("prev", None)
        bad = sorted(set(entry) & set(NOT_PER_LAYER) | set(entry) - {f.name for f in fields(self)})
        if bad:
            allowed = [f.name for f in fields(self) if f.name not in NOT_PER_LAYER]
            raise ConfigError(f"distill.layers.{key}: cannot override {', '.join(bad)}; allowed: {', '.join(allowed)}")
        base = {k: v for k, v in asdict(self).items() if k not in ("layers", "last")}
        return load(DistillConfig, {**base, **entry}, f"distill.layers.{key}")

    def prev(self, key: str) -> str:
        """The layer whose output feeds layer `key` ("00": the embedding output)."""
        return str((self.layers.get(key) or {}).get("prev", f"{int(key) - 1:02d}"))


class LayerOnly(nn.Module):
    """A Hyena decoder layer called on hidden states alone (its mixer needs no positions or masks)."""
    def __init__(self, layer: nn.Module):
        super().__init__()
        self.layer = layer

    def forward(self, h: torch.Tensor) -> torch.Tensor:  # (B, L, d) -> (B, L, d)
        return first_output(self.layer(h))


class MixerOnly(nn.Module):
    """What a layer's mixer adds to the residual stream: mixer(norm(h)), the attention-transfer output."""
    def __init__(self, norm: nn.Module, mixer: nn.Module):
        super().__init__()
        self.norm, self.mixer = norm, mixer

    def forward(self, h: torch.Tensor) -> torch.Tensor:  # (B, L, d) -> (B, L, d)
        return first_output(self.mixer(self.norm(h)))


class ComputedTargets:
    """Targets made batch by batch from the inputs by a frozen function (the teacher's attention),
    readable like a row-indexed array by `take`: `targets.take_rows(rows)` -> fn(inputs[rows])."""
    def __init__(self, inputs, fn: Callable[[torch.Tensor], torch.Tensor], device: torch.device):
        self.inputs, self.fn, self.device = inputs, fn, device
        self.shape, self.dtype = tuple(inputs.shape), np.dtype(np.float32)

    @torch.no_grad()
    def take_rows(self, rows: np.ndarray) -> np.ndarray:
        return self.fn(to_tensor(take(self.inputs, rows), self.device)).float().cpu().numpy()


def trainable_fn(layer: nn.Module, mixer: nn.Module, norm: nn.Module, cfg: DistillConfig) -> nn.Module:
    """The function of the input that distillation fits (LayerOnly or MixerOnly), with exactly the
    parameters `cfg.train` names set to require gradients."""
    layer.requires_grad_(cfg.train == "layer")
    mixer.requires_grad_(True)
    return LayerOnly(layer) if cfg.target == "layer_output" else MixerOnly(norm, mixer)


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


@torch.no_grad()
def fit_readout(mixer: nn.Module, norm: nn.Module, inputs, targets, cfg: DistillConfig, env: DistEnv) -> None:
    """Solve the mixer's output projection (weight and bias) in closed form: the ridge least-squares
    map from its gated features g = x_0 * (h * ...) to the targets over every training row (the
    first `skip_first` positions left out). Gram and cross terms accumulate in fp64 batch by batch,
    so memory is O(d^2) whatever the data; one (d+1)-sized solve follows."""
    d = mixer.out_proj.in_features
    gram = torch.zeros(d + 1, d + 1, dtype=torch.float64, device=env.device)
    cross = torch.zeros(d + 1, mixer.out_proj.out_features, dtype=torch.float64, device=env.device)
    n = inputs.shape[0]
    for start in range(0, n, VAL_BATCH):
        rows = np.arange(start, min(start + VAL_BATCH, n))
        x = to_tensor(take(inputs, rows), env.device)  # (b, L, d)
        y = to_tensor(take(targets, rows), env.device)[:, cfg.skip_first:].flatten(0, 1).double()  # (b L, d)
        g = mixer.features(norm(x)).mT[:, cfg.skip_first:].flatten(0, 1).double()  # (b L, d)
        g = torch.cat([g, torch.ones_like(g[:, :1])], dim=1)  # a bias column
        gram += g.T @ g
        cross += g.T @ y
    if env.distributed:
        torch.distributed.all_reduce(gram)
        torch.distributed.all_reduce(cross)
    gram += cfg.ridge * gram.diagonal().mean() * torch.eye(d + 1, dtype=gram.dtype, device=gram.device)
    w = torch.linalg.solve(gram, cross)  # (d+1, d_out)
    mixer.out_proj.weight.copy_(w[:-1].T.to(mixer.out_proj.weight.dtype))
    mixer.out_proj.bias.copy_(w[-1].to(mixer.out_proj.bias.dtype))



def readout_norm(mixer: nn.Module) -> float:
    """Spectral norm of the mixer's output projection: how much the readout amplifies a change of the
    features it reads (the teacher's o_proj: ~10-14); a large one forces a small fine-tune lr."""
    return torch.linalg.matrix_norm(mixer.out_proj.weight.detach().double(), ord=2).item()


def _seconds(fn: Callable[[], None]) -> float:
    """Wall seconds of fn()."""
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def distill_layer(
    fn: nn.Module,
    train_inputs,
    train_targets,
    val_inputs,
    val_targets,
    cfg: DistillConfig,
    env: DistEnv,
    log: LogFn | None = None,
    readout: Callable[[], None] | None = None,
) -> dict[str, float]:
    """Fit `fn` (its parameters that require gradients) to the targets by MSE; returns validation
    MSE before and after, and costs. `readout()`, if given, is called before the first gradient
    step and after the last (a closed-form solve of parameters the steps leave alone).

    Inputs are (n, L, d) numpy or Zarr arrays; targets the same, or `ComputedTargets`; row k of
    inputs and targets are the same sequence.
    """
    if tuple(train_inputs.shape) != tuple(train_targets.shape):
        raise ValueError(f"inputs {train_inputs.shape} and targets {train_targets.shape} differ in shape")
    torch.manual_seed(cfg.seed)
    train_inputs = load_all(train_inputs, RAM_BYTES // 2)
    train_targets = load_all(train_targets, RAM_BYTES // 2)
    fn = fn.to(env.device)
    solve_seconds = _seconds(readout) if readout is not None else 0.0
    before = layer_mse(fn.eval(), val_inputs, val_targets, env, VAL_BATCH)

    model = wrap(fn, env)
    n, seq_len = train_inputs.shape[0], train_inputs.shape[1]
    total = steps_per_run(n, cfg.batch_size, cfg.epochs)
    local = env.local_slice(cfg.batch_size)

    def step(rows: np.ndarray) -> float:
        rows = rows[local]
        x = to_tensor(take(train_inputs, rows), env.device)  # (b, L, d)
        y = to_tensor(take(train_targets, rows), env.device)  # (b, L, d)
        with env.autocast():
            out = model(x)
        loss = nn.functional.mse_loss(out[:, cfg.skip_first:].float(), y[:, cfg.skip_first:])
        loss.backward()
        return loss.item()

    fn.train()
    run = run_steps(fn, cfg, epoch_batches(n, cfg.batch_size, cfg.epochs, cfg.seed), total, step, env, log=log,
                    metric="train_mse", desc="distill", hint="lower distill.lr") if total else \
        {"train_loss_final": None, "seconds": 0.0}
    fn.eval()
    if readout is not None and total:
        solve_seconds += _seconds(readout)
    after = layer_mse(fn, val_inputs, val_targets, env, VAL_BATCH)
    fn.requires_grad_(False)
    return {
        "val_mse_before": before["mse"], "val_mse": after["mse"],
        "val_nmse_before": before["nmse"], "val_nmse": after["nmse"],
        "val_mse_after_first_before": before["mse_after_first"], "val_mse_after_first": after["mse_after_first"],
        "train_mse_final": run["train_loss_final"], "steps": total,
        "train_tokens": total * cfg.batch_size * seq_len, "seconds": run["seconds"] + solve_seconds,  # training: gradient steps and readout solves
    }


@torch.no_grad()
def layer_outputs(fn: Callable[[torch.Tensor], torch.Tensor], inputs, env: DistEnv, batch_size: int,
                  write: Callable[[int, np.ndarray], None], dtype=np.float16) -> None:
    """Run a frozen layer function over every row of `inputs`; hand each output batch to `write(start, out)`."""
    n = inputs.shape[0]
    for start in tqdm(range(0, n, batch_size), desc="layer outputs", unit="batch", disable=not env.is_main):
        rows = np.arange(start, min(start + batch_size, n))
        with env.autocast():
            out = fn(to_tensor(take(inputs, rows), env.device))
        write(start, out.float().cpu().numpy().astype(dtype))


def check_layer_fits(store, key: str, cfg: DistillConfig) -> None:
    """Refuse a layer key outside the teacher's layers of activation store `store`, or a batch
    larger than its training sequences."""
    if not 1 <= int(key) <= store.n_layers:
        raise ValueError(f"layer {key} is outside the teacher's 1..{store.n_layers} layers")
    if cfg.batch_size > store.n_sequences("train"):
        raise ValueError(f"distill.batch_size {cfg.batch_size} (layer {key}) exceeds the "
                         f"{store.n_sequences('train')} dumped training sequences: lower it or raise dump.train_sequences")


def distill_one_layer(student: nn.Module, i: int, cfg: DistillConfig, env: DistEnv, train: tuple, val: tuple,
                      teacher_dir: str | Path, log: LogFn | None = None) -> dict:
    """Distil decoder layer i (0-based) of `student` on (inputs, layer-output targets) arrays
    `train` and `val`; returns its metrics. A Hyena layer trains on `cfg.target`; a layer a hybrid
    keeps is only measured. Either way the metrics carry the layer-output MSE before and after
    (`val_layer_*`), so that every recipe reports one comparable number per layer. The teacher
    (from `teacher_dir`) is loaded only for `target: mixer_output`."""
    if not student.config.is_hyena(i):
        return kept_layer_metrics(student, i, val, env)
    block, mixer = student.decoder_layers()[i], student.mixer(i)
    fn = trainable_fn(block, mixer, student.adapter.input_norm(block), cfg)
    (train_in, train_out), (val_in, val_out) = train, val
    if cfg.target == "layer_output":
        result = distill_layer(fn, train_in, train_out, val_in, val_out, cfg, env, log=log)
        before, after = {"mse": result["val_mse_before"], "nmse": result["val_nmse_before"]}, \
            {"mse": result["val_mse"], "nmse": result["val_nmse"]}
    else:
        teacher = load_teacher(str(teacher_dir)).to(env.device)

        def target(x):
            return attention_output(teacher, i, x)

        whole = LayerOnly(block)
        before = layer_mse(whole, val_in, val_out, env, VAL_BATCH)
        train_t = load_all(ComputedTargets(train_in, target, env.device), RAM_BYTES // 2)
        val_t = ComputedTargets(val_in, target, env.device)
        readout = None
        if cfg.readout == "least_squares":
            mixer.out_proj.requires_grad_(False)  # the solve owns the readout; the steps shape the features

            def readout():
                fit_readout(mixer, fn.norm, train_in, train_t, cfg, env)
        result = distill_layer(fn, train_in, train_t, val_in, val_t, cfg, env, log=log, readout=readout)
        after = layer_mse(whole, val_in, val_out, env, VAL_BATCH)
    return {**result, "val_layer_mse_before": before["mse"], "val_layer_mse": after["mse"],
            "val_layer_nmse_before": before["nmse"], "val_layer_nmse": after["nmse"],
            "readout_norm": readout_norm(mixer)}


def kept_layer_metrics(student: nn.Module, i: int, val: tuple, env: DistEnv) -> dict:
    """A layer the hybrid keeps: no training; its layer-output MSE on the stage's inputs is recorded
    (zero when teacher-forced: it is the teacher's layer)."""
    val_in, val_out = val
    m = layer_mse(lambda x: student.run_layer(i, x), val_in, val_out, env, VAL_BATCH)
    return {"kept_attention": True, "steps": 0, "train_tokens": 0, "seconds": 0.0,
            "val_mse_before": m["mse"], "val_mse": m["mse"], "val_nmse_before": m["nmse"], "val_nmse": m["nmse"],
            "val_mse_after_first_before": m["mse_after_first"], "val_mse_after_first": m["mse_after_first"],
            "val_layer_mse_before": m["mse"], "val_layer_mse": m["mse"],
            "val_layer_nmse_before": m["nmse"], "val_layer_nmse": m["nmse"]}


@torch.no_grad()
def free_running_mse(student: nn.Module, store) -> dict[str, float]:
    """Every layer's output MSE when the assembled student runs alone from the teacher's embedding
    output on the validation sequences of activation store `store`, against the teacher's layer
    outputs: {"01": mse, ...}. With `distill.input: teacher` this shows how errors compound once
    layers feed each other; with `student` it matches the per-stage validation MSE."""
    n_layers, n_val = len(student.decoder_layers()), store.n_sequences("val")
    sq, count = np.zeros(n_layers), 0
    for start in range(0, n_val, VAL_BATCH):
        rows = slice(start, min(start + VAL_BATCH, n_val))
        h = torch.from_numpy(np.asarray(store.layer("val", 0)[rows])).float()  # (b, L, d)
        for i in range(n_layers):
            h = student.run_layer(i, h)
            target = torch.from_numpy(np.asarray(store.layer("val", i + 1)[rows])).float()
            sq[i] += (h - target).pow(2).sum().item()
        count += h.numel()
    return {f"{i + 1:02d}": sq[i] / count for i in range(n_layers)}


def load_distilled_layers(student: nn.Module, chain: dict[str, str], layer_dir: Callable[[str], Path],
                          last: str) -> None:
    """Load every distilled layer of `chain` ({"01": sha256 of its weights, ...}) into `student`
    from `layer_dir(key)/layer.safetensors`, refusing a missing file or one that changed since the
    layer `last` was distilled (its chain recorded the hash)."""
    layers = student.decoder_layers()
    for key, sha in sorted(chain.items()):
        weights = layer_dir(key) / "layer.safetensors"
        if not weights.is_file():
            raise FileNotFoundError(f"{weights} not found: rerun distill@{key} (dvc repro distill@{key})")
        if file_sha256(weights) != sha:
            raise RuntimeError(f"{weights} changed since layer {last} was distilled: run dvc repro")
        layers[int(key) - 1].load_state_dict(load_file(str(weights)))


STUDENT_OUTPUTS = "acts.zarr"  # the student's output of a layer, inside its layer directory


def save_layer(student: nn.Module, i: int, out: Path, chain: dict[str, str], key: str,
               inputs: tuple | None, env: DistEnv, batch_size: int, attrs: dict) -> None:
    """Write distilled layer i (0-based, params key `key`) into directory `out`: its weights
    (`layer.safetensors`), `chain.json` (every earlier layer's weight hash plus its own, so this
    output changes whenever any of them does) and, given the layer's (train, val) `inputs`
    (progressive distillation), its own outputs on them (`acts.zarr`: the next layer's inputs)."""
    block = student.decoder_layers()[i]
    weights = out / "layer.safetensors"
    save_file({k: v.detach().cpu().contiguous() for k, v in block.state_dict().items()}, str(weights))
    atomic_write_json(out / "chain.json", {**chain, key: file_sha256(weights)})
    if inputs is None:
        return

    def fill(split, arr):
        src = inputs[0] if split == "train" else inputs[1]
        layer_outputs(lambda x: student.run_layer(i, x), src, env, batch_size,
                      lambda start, o: arr.__setitem__(slice(start, start + len(o)), o))

    write_outputs(out / STUDENT_OUTPUTS, {"train": tuple(inputs[0].shape), "val": tuple(inputs[1].shape)}, fill,
                  attrs=attrs)
