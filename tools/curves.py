"""`hyena-distill curves`: training curves of a run as one PNG (for reports; `dvc plots show` for HTML).

Reads the DVCLive logs the stages write (<paths.reports>/dvclive/distill_XX, finetune, pretrain).
"""

from __future__ import annotations

import csv
from pathlib import Path

import typer

from hyena.evaluate.plots import plot_training_curves
from pipeline.params import PARAMS, StageError, load_params, one_line_errors, paths

app = typer.Typer(add_completion=False)


def read_tsv(path: Path, column: str) -> list[tuple[float, float]]:
    """(step, value) points of one DVCLive metric file; [] when it does not exist."""
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return [(float(row["step"]), float(row[column])) for row in csv.DictReader(f, delimiter="\t")]


@app.command()
@one_line_errors
def main(
    params: Path = typer.Option(PARAMS, help="params.yaml (paths.reports)"),
    out: Path = typer.Option(None, help="PNG to write (default: <paths.reports>/plots/training_curves.png)"),
) -> None:
    """Plot distillation MSE per layer and the fine-tune / pre-train losses."""
    p = paths(load_params(params))
    dvclive = Path(p.reports) / "dvclive"
    out = out or p.plot("training_curves")

    distill = {d.name.split("_")[-1]: read_tsv(d / "plots/metrics/train_mse.tsv", "train_mse")
               for d in sorted(dvclive.glob("distill_*"))}
    lm = {name: read_tsv(dvclive / name / "plots/metrics/train_loss.tsv", "train_loss") for name in ("finetune", "pretrain")}
    lm = {k: v for k, v in lm.items() if v}
    if not any(distill.values()) and not lm:
        raise StageError(f"no DVCLive training logs under {dvclive}: run the pipeline first (dvc repro)")
    plot_training_curves(distill, lm, out)
    typer.echo(f"{len(distill)} distilled layers, {', '.join(lm) or 'no LM runs'} -> {out}")


if __name__ == "__main__":
    app()
