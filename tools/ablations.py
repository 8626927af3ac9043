"""`hyena-distill ablations`: compare DVC experiments layer by layer.

Queue variants, run them, then compare:

    dvc exp run --queue -n teacher-forced -S distill.input=teacher assemble
    dvc exp run --queue -n lr-3e-3 -S distill.lr=0.003 assemble
    dvc queue start && dvc queue status
    hyena-distill ablations            # -> reports/ablations.md, reports/plots/ablations_layer_mse.png

Reads `dvc exp show --json` (the workspace, its baseline commit and every experiment of it) and
writes a table of the params that differ with each variant's per-layer validation MSE (stage and
free-running) and perplexities, and one plot of MSE per layer, one line per variant.
"""

from __future__ import annotations

from pathlib import Path

import typer

from hyena.evaluate.ablations import layer_table, plot_variants_layer_mse
from pipeline.params import PARAMS, one_line_errors
from tools import experiments

app = typer.Typer(add_completion=False)

# bookkeeping params and later stages' knobs: the table compares distillation variants
IGNORE = ("distill.layers", "distill.last", "eval.", "finetune.", "pretrain.", "recurrent.")


@app.command()
@one_line_errors
def main(
    exp_json: experiments.ExpJsonOption = None,
    params: experiments.ParamsOption = PARAMS,
    out: Path = typer.Option(None, help="markdown table (default: <paths.reports>/ablations.md)"),
    plot: Path = typer.Option(None, help="per-layer MSE plot (default: <paths.reports>/plots/ablations_layer_mse.png)"),
    metric: list[str] = typer.Option([], help="extra metric columns, flattened keys such as "
                                     "finetune.val_ppl (absent ones show as –)"),
    num: experiments.NumOption = 1,
    only: experiments.OnlyOption = None,
    max_layer: int = typer.Option(0, help="compare layers 1..N only, e.g. for experiments run up to distill@N (0: all)"),
    free: bool = typer.Option(True, help="show the assembled student's free-running MSE (--no-free when some "
                                          "experiments stopped before assemble)"),
) -> None:
    """Table and plot of per-layer distillation MSE across DVC experiments."""
    p, variants = experiments.selected_variants(params, exp_json, num, only, "experiment")
    out = out or Path(p.reports) / "ablations.md"
    plot = plot or p.plot("ablations_layer_mse")
    for v in variants:
        if max_layer > 0:
            v.layer_mse = {k: x for k, x in v.layer_mse.items() if k <= max_layer}
            v.free_mse = {k: x for k, x in v.free_mse.items() if k <= max_layer}
        if not free:
            v.free_mse = {}
    table = layer_table(variants, metric, IGNORE)
    experiments.write_markdown(out, "Ablations", "Per-layer validation MSE of each distillation stage and of the assembled "
                   "student run free (teacher's embeddings in, student layers only).\n\n", plot, table)
    plot_variants_layer_mse(variants, plot, IGNORE)
    typer.echo(table)
    typer.echo(f"{len(variants)} variants -> {out}, {plot}")


if __name__ == "__main__":
    app()
