"""Stage `init-student`: build the Hyena student from the teacher (layer 0 of the distillation chain).

Writes the undistilled student (HF format) and its embedding outputs, which are the inputs of
layer 1 in progressive distillation (equal to the teacher's: embeddings are copied).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch
import typer

from pipeline.common import (
    PARAMS,
    StageError,
    load_params,
    load_teacher_from,
    one_line_errors,
    section,
    write_metrics,
)

app = typer.Typer(add_completion=False)


@dataclasses.dataclass
class StudentParams:
    init: str = "random"  # random (the paper) | teacher_attention (Q/K/V/O -> Hyena projections)
    seed: int = 0  # seed of the Hyena weights' random initialisation
    hyena: dict = dataclasses.field(default_factory=dict)  # HyenaConfig fields (hyena/operator.py)


@app.command()
@one_line_errors
def main(
    params: Path = typer.Option(PARAMS, help="params.yaml"),
    store: Path = typer.Option(Path("data/activations.zarr"), help="teacher activation store"),
    out: Path = typer.Option(Path("data/students/layer_00"), help="undistilled student (HF format)"),
    acts_out: Path = typer.Option(Path("data/student_acts/layer_00.zarr"), help="student embedding outputs"),
) -> None:
    from hyena.io import atomic_dir
    from hyena.operator import HyenaConfig
    from hyena.store import ActivationStore
    from hyena.student import build_student
    from hyena.teachers import weights_hash
    from hyena.train.acts import write_outputs

    all_params = load_params(params)
    p = section(all_params, "student", StudentParams)
    acts = ActivationStore.open(store)
    teacher = load_teacher_from(all_params)
    want = (acts.attrs.get("teacher") or {}).get("weights_hash")
    if want and want != weights_hash(teacher):
        raise StageError(f"the teacher in params differs from the one that filled {store}: rerun dump-activations")
    torch.manual_seed(p.seed)
    try:
        hyena_cfg = HyenaConfig(**p.hyena)
    except TypeError as err:
        raise StageError(f"bad params student.hyena: {err}") from err
    source = all_params["teacher"]["source"]
    student = build_student(teacher, hyena_cfg, init=p.init, teacher_source=source)
    with atomic_dir(out) as tmp:
        student.save_pretrained(tmp)
        write_metrics(tmp / "chain.json", {})  # hashes of distilled layers so far: none

    def fill(split: str, arr) -> None:
        src = acts.layer(split, 0)
        for start in range(0, src.shape[0], 64):
            arr[start:start + 64] = np.asarray(src[start:start + 64])

    shapes = {s: tuple(acts.layer(s, 0).shape) for s in ("train", "val")}
    write_outputs(acts_out, shapes, fill, attrs={"layer": 0, "source": "teacher embedding output"})
    n = sum(p.numel() for p in student.parameters())
    typer.echo(f"student ({p.init} init, {n:,} parameters) -> {out}; layer-1 inputs -> {acts_out}")


if __name__ == "__main__":
    app()
