"""Stage `assemble`: put the distilled layers into one student (the MSE-distilled model, HF format).

Also measures the free-running error: starting from the teacher's embedding output, run the
assembled student layer by layer on the validation sequences and compare every layer's output
with the teacher's. With `distill.input: teacher` this shows how errors compound once layers
feed each other; with `student` it matches the per-stage validation MSE.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import typer

from pipeline.common import PARAMS, StageError, load_params, one_line_errors, section, write_metrics
from pipeline.distill import DistillParams

app = typer.Typer(add_completion=False)


@app.command()
@one_line_errors
def main(
    params: Path = typer.Option(PARAMS, help="params.yaml"),
    store: Path = typer.Option(Path("data/activations.zarr"), help="teacher activation store"),
    students: Path = typer.Option(Path("data/students"), help="student checkpoints directory"),
    reports: Path = typer.Option(Path("reports"), help="metrics and plots"),
    batch_size: int = typer.Option(8, help="validation sequences per forward"),
) -> None:
    from safetensors.torch import load_file

    from hyena.io import atomic_dir, file_sha256
    from hyena.store import ActivationStore
    from hyena.student import HyenaStudentForCausalLM

    p = section(load_params(params), "distill", DistillParams)
    if p.last != max(p.layers):
        raise StageError(f"params distill.last is {p.last!r} but the last layer in distill.layers is {max(p.layers)!r}")
    chain = json.loads((students / f"layer_{p.last}" / "chain.json").read_text())
    student = HyenaStudentForCausalLM.from_pretrained(students / "layer_00").eval()
    layers = student.decoder_layers()
    for key, sha in sorted(chain.items()):
        weights = students / f"layer_{key}" / "layer.safetensors"
        if file_sha256(weights) != sha:
            raise StageError(f"{weights} changed since layer {p.last} was distilled: run dvc repro")
        layers[int(key) - 1].load_state_dict(load_file(str(weights)))
    with atomic_dir(students / "distilled") as tmp:
        student.save_pretrained(tmp)

    teacher = ActivationStore.open(store)
    n_val = teacher.n_sequences("val")
    sq = np.zeros(len(layers))
    count = 0
    with torch.no_grad():
        for start in range(0, n_val, batch_size):
            rows = slice(start, min(start + batch_size, n_val))
            h = torch.from_numpy(np.asarray(teacher.layer("val", 0)[rows])).float()  # (b, L, d)
            for i in range(len(layers)):
                h = student.run_layer(i, h)
                target = torch.from_numpy(np.asarray(teacher.layer("val", i + 1)[rows])).float()
                sq[i] += (h - target).pow(2).sum().item()
            count += h.numel()
    free = {f"{i + 1:02d}": sq[i] / count for i in range(len(layers))}
    stage = {}
    for key in chain:
        stage[key] = json.loads((students / f"layer_{key}" / "metrics.json").read_text())
    write_metrics(reports / "metrics" / "assemble.json", {"free_running_val_mse": free})
    _plot_layer_mse(stage, free, reports / "plots" / "layer_mse.png")
    last = max(free)
    typer.echo(f"distilled student -> {students / 'distilled'}; free-running val MSE at layer {last}: {free[last]:.4g}")


def _plot_layer_mse(stage: dict, free: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = sorted(stage)
    x = [int(k) for k in keys]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(x, [stage[k]["val_mse_before"] for k in keys], "o:", label="before distillation")
    ax.plot(x, [stage[k]["val_mse"] for k in keys], "o-", label=f"after (stage inputs: {stage[keys[0]]['input']})")
    ax.plot([int(k) for k in sorted(free)], [free[k] for k in sorted(free)], "s--", label="assembled, free-running")
    ax.set(xlabel="layer", ylabel="validation MSE vs teacher", yscale="log", title="Per-layer distillation error")
    ax.grid(alpha=0.3)
    ax.legend()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    app()
