"""`hyena-distill recipes`: compare whole recipes run as DVC experiments.

    dvc exp run --queue -n attn-transfer -S distill.target=mixer_output -S distill.input=teacher
    dvc queue start && dvc queue status
    hyena-distill recipes --only paper --only attn-transfer     # -> reports/recipes.md, reports/plots/recipes.png

One row per experiment (or branch/commit) with the params that differ, OWT perplexity of the
distilled, fine-tuned and from-scratch students, the fine-tuned student's ratio to the teacher,
the per-layer normalised layer-output MSE, and the wall time of the training stages.
"""

from __future__ import annotations

from pathlib import Path

import typer

from hyena.core.io import atomic_write_text
from hyena.evaluate.recipes import plot_recipes, recipe_table
from pipeline.params import PARAMS, StageError, load_params, one_line_errors, paths
from tools.experiments import load_variants, pick

app = typer.Typer(add_completion=False)

# bookkeeping params and the stages that do not make the distilled student (the fine-tune does)
IGNORE_RECIPE = ("distill.layers", "distill.last", "pretrain.", "recurrent.", "eval.", "paths.")


@app.command()
@one_line_errors
def main(
    params: Path = typer.Option(PARAMS, help="params.yaml (paths.reports)"),
    exp_json: Path = typer.Option(None, help="a saved `dvc exp show --json` (default: run it now)"),
    num: int = typer.Option(1, help="commits back from HEAD whose experiments to include (dvc exp show -n)"),
    only: list[str] = typer.Option([], help="keep only these recipes (experiment or branch names), in this order"),
    title: str = typer.Option("Recipes", help="heading of the markdown file"),
    out: Path = typer.Option(None, help="markdown (default: <paths.reports>/recipes.md)"),
    plot: Path = typer.Option(None, help="plot (default: <paths.reports>/plots/recipes.png)"),
) -> None:
    """Table and plot of whole recipes across DVC experiments."""
    p = paths(load_params(params))
    out = out or Path(p.reports) / "recipes.md"
    plot = plot or p.plot("recipes")
    variants = pick([v for v in load_variants(exp_json, num, p.reports) if v.metrics], only, "run")
    if not variants:
        raise StageError("no run with metrics: run `dvc repro` or `dvc exp run` first")
    table = recipe_table(variants, IGNORE_RECIPE)
    rel = plot.relative_to(out.parent) if plot.is_relative_to(out.parent) else plot
    atomic_write_text(out, f"# {title}\n\n![recipes]({rel})\n\n{table}")
    plot_recipes(variants, plot)
    typer.echo(table)
    typer.echo(f"{len(variants)} recipes -> {out}, {plot}")


if __name__ == "__main__":
    app()
