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

from hyena.evaluate.recipes import plot_recipes, recipe_table
from pipeline.params import PARAMS, one_line_errors
from tools import experiments

app = typer.Typer(add_completion=False)

# bookkeeping params and the stages that do not make the distilled student (the fine-tune does)
IGNORE_RECIPE = ("distill.layers", "distill.last", "pretrain.", "recurrent.", "eval.", "paths.")


@app.command()
@one_line_errors
def main(
    params: experiments.ParamsOption = PARAMS,
    exp_json: experiments.ExpJsonOption = None,
    num: experiments.NumOption = 1,
    only: experiments.OnlyOption = None,
    title: str = typer.Option("Recipes", help="heading of the markdown file"),
    out: Path = typer.Option(None, help="markdown (default: <paths.reports>/recipes.md)"),
    plot: Path = typer.Option(None, help="plot (default: <paths.reports>/plots/recipes.png)"),
) -> None:
    """Table and plot of whole recipes across DVC experiments."""
    p, variants = experiments.selected_variants(params, exp_json, num, only, "run", keep=lambda v: bool(v.metrics))
    out = out or Path(p.reports) / "recipes.md"
    plot = plot or p.plot("recipes")
    table = recipe_table(variants, IGNORE_RECIPE)
    experiments.write_markdown(out, title, "", plot, table)
    plot_recipes(variants, plot)
    typer.echo(table)
    typer.echo(f"{len(variants)} recipes -> {out}, {plot}")


if __name__ == "__main__":
    app()
