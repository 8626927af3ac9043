"""Stage `distill@XX`: distil decoder layer XX of the student by MSE to the teacher's layer XX.

Inputs of layer XX: the student's own cached output of layer XX-1 (`distill.input: student`,
progressive, as the paper) or the teacher's (`teacher`, teacher-forced). Outputs: the trained
layer's weights, the student's output of layer XX (the next stage's input), metrics and curves.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import typer

from pipeline.common import (
    PARAMS,
    StageError,
    dvclive_logger,
    load_params,
    one_line_errors,
    section,
    write_metrics,
)

app = typer.Typer(add_completion=False)

OVERRIDABLE = ("lr", "filter_lr", "min_lr_ratio", "warmup_frac", "decay_frac", "weight_decay",
               "batch_size", "epochs", "train", "skip_first", "grad_clip", "seed")


@dataclasses.dataclass
class DistillParams:
    input: str = "student"  # student: progressive (paper) | teacher: teacher-forced (layers independent)
    train: str = "mixer"  # mixer: only the Hyena operator trains | layer: the whole decoder layer
    skip_first: int = 0  # first positions of each sequence left out of the loss (attention-sink outliers; 0: paper)
    lr: float = 1e-3  # peak learning rate (paper's best: 1e-3)
    filter_lr: float | None = None  # implicit-filter learning rate (null: same as lr)
    min_lr_ratio: float = 0.1  # decay floor as a fraction of lr (paper: 10%)
    warmup_frac: float = 0.025  # linear warm-up share of the steps (paper: 2.5%)
    decay_frac: float = 1.0  # cosine decay ends at this share of the steps, then constant
    betas: list = dataclasses.field(default_factory=lambda: [0.9, 0.98])  # AdamW betas (paper)
    weight_decay: float = 0.1  # AdamW weight decay (paper); the filter gets none
    batch_size: int = 8  # sequences per optimiser step (global, over all processes; paper: 60)
    epochs: int = 2  # passes over the dumped training sequences (paper: 8)
    grad_clip: float = 1.0  # max gradient norm (0: off)
    seed: int = 0  # data order and any randomness
    log_every: int = 5  # steps between logged training losses
    layers: dict = dataclasses.field(default_factory=dict)  # "XX": {prev: "XX-1", <overrides>}
    last: str = ""  # the last key of `layers` (DVC templating cannot compute it)

    def __post_init__(self) -> None:
        if self.input not in ("student", "teacher"):
            raise ValueError(f"distill.input must be 'student' or 'teacher' (got {self.input!r})")


def layer_config(p: DistillParams, key: str):
    from hyena.train.distill import DistillConfig

    if key not in p.layers:
        raise StageError(f"layer {key!r} is not in params distill.layers ({', '.join(p.layers)})")
    entry = dict(p.layers[key] or {})
    entry.pop("prev", None)
    unknown = sorted(set(entry) - set(OVERRIDABLE))
    if unknown:
        raise StageError(f"distill.layers.{key}: cannot override {', '.join(unknown)}; allowed: {', '.join(OVERRIDABLE)}")
    base = {f: getattr(p, f) for f in OVERRIDABLE}
    return DistillConfig(**{**base, **entry}, betas=tuple(p.betas), log_every=p.log_every)


@app.command()
@one_line_errors
def main(
    layer: str = typer.Option(..., help="layer key in params distill.layers, e.g. 03 (1-based)"),
    params: Path = typer.Option(PARAMS, help="params.yaml"),
    store: Path = typer.Option(Path("data/activations.zarr"), help="teacher activation store"),
    students: Path = typer.Option(Path("data/students"), help="student checkpoints directory"),
    acts: Path = typer.Option(Path("data/student_acts"), help="student layer outputs directory"),
    reports: Path = typer.Option(Path("reports"), help="metrics and DVCLive curves"),
) -> None:
    from safetensors.torch import save_file

    from hyena.io import atomic_dir, file_sha256
    from hyena.store import ActivationStore
    from hyena.student import HyenaStudentForCausalLM
    from hyena.train.acts import open_outputs, write_outputs
    from hyena.train.dist import setup, teardown
    from hyena.train.distill import distill_layer, layer_outputs

    p = section(load_params(params), "distill", DistillParams)
    cfg = layer_config(p, layer)
    idx = int(layer)
    prev = str((p.layers[layer] or {}).get("prev", f"{idx - 1:02d}"))
    env = setup()
    teacher_acts = ActivationStore.open(store)
    if not 1 <= idx <= teacher_acts.n_layers:
        raise StageError(f"layer {layer} is outside the teacher's 1..{teacher_acts.n_layers} layers")
    chain = json.loads((students / f"layer_{prev}" / "chain.json").read_text())
    student = HyenaStudentForCausalLM.from_pretrained(students / "layer_00")
    student.requires_grad_(False)
    block, mixer = student.decoder_layers()[idx - 1], student.mixer(idx - 1)
    if p.input == "student":
        inputs = open_outputs(acts / f"layer_{prev}.zarr")
        train_in, val_in = inputs["train"], inputs["val"]
    else:
        train_in, val_in = teacher_acts.layer("train", int(prev)), teacher_acts.layer("val", int(prev))
    train_out, val_out = teacher_acts.layer("train", idx), teacher_acts.layer("val", idx)

    log = dvclive_logger(reports / "dvclive" / f"distill_{layer}") if env.is_main else None
    result = distill_layer(block, mixer, train_in, train_out, val_in, val_out, cfg, env, log=log)
    if env.is_main:
        with atomic_dir(students / f"layer_{layer}") as tmp:
            weights = tmp / "layer.safetensors"
            save_file({k: v.detach().cpu().contiguous() for k, v in block.state_dict().items()}, str(weights))
            write_metrics(tmp / "metrics.json", {"layer": idx, "input": p.input, **result})
            # every earlier layer's hash: this output changes whenever any of them does
            write_metrics(tmp / "chain.json", {**chain, layer: file_sha256(weights)})

        def fill(split, arr):
            src = train_in if split == "train" else val_in
            layer_outputs(block, src, env, cfg.batch_size,
                          lambda start, out: arr.__setitem__(slice(start, start + len(out)), out))

        shapes = {"train": tuple(train_in.shape), "val": tuple(val_in.shape)}
        write_outputs(acts / f"layer_{layer}.zarr", shapes, fill, attrs={"layer": idx, "input": p.input})
        write_metrics(reports / "metrics" / "distill" / f"layer_{layer}.json",
                      {k: result[k] for k in ("val_mse", "val_mse_before", "val_nmse", "val_mse_after_first", "steps")})
        typer.echo(f"layer {layer}: val MSE {result['val_mse_before']:.4g} -> {result['val_mse']:.4g} "
                   f"({result['val_mse_before'] / max(result['val_mse'], 1e-30):.1f}x lower), "
                   f"{result['steps']} steps in {result['seconds']:.0f}s")
    env.barrier()
    teardown(env)


if __name__ == "__main__":
    app()
