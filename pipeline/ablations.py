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

import json
import subprocess
from pathlib import Path

import typer

from pipeline.params import PARAMS, StageError, load_params, one_line_errors, paths

app = typer.Typer(add_completion=False)

# bookkeeping params and later stages' knobs: the table compares distillation variants
IGNORE = ("distill.layers", "distill.last", "eval.", "finetune.", "pretrain.", "recurrent.")


def variants_from_exp_show(entries: list[dict], reports: str = "reports"):
    """`dvc exp show --json` output -> [Variant]: the workspace (if it holds a run of its own), the
    baseline commits and their experiments. Entries without metrics (queued, failed) are skipped.
    `reports` is paths.reports (metric files are keyed by their path).
    """
    from hyena.evaluate.ablations import Variant, flatten

    layer_metrics = f"{reports}/metrics/distill/layer_"
    assemble_metrics = f"{reports}/metrics/assemble.json"

    def one(name: str, data: dict):
        metrics = {path: (m or {}).get("data") for path, m in (data.get("metrics") or {}).items()}
        metrics = {path: values for path, values in metrics.items() if values}  # unreadable files carry "error"
        if not metrics:
            return None
        params = {}
        for _, p in sorted((data.get("params") or {}).items()):
            params.update(flatten((p or {}).get("data") or {}))
        layer_mse, layer_nmse, other, timings = {}, {}, {}, {}
        for path, values in metrics.items():
            if path.startswith(layer_metrics) and "val_mse" in values:
                layer = int(Path(path).stem.split("_")[-1])  # every target also reports the layer-output MSE
                layer_mse[layer] = float(values.get("val_layer_mse", values["val_mse"]))
                layer_nmse[layer] = float(values.get("val_layer_nmse", values.get("val_nmse", float("nan"))))
            elif f"{reports}/timings/" in path:
                timings[Path(path).stem] = sum(float(v) for v in values.values() if isinstance(v, (int, float)))
            elif path != assemble_metrics:
                other.update({f"{Path(path).stem}.{k}": v for k, v in flatten(values).items()
                              if isinstance(v, (int, float)) and not isinstance(v, bool)})
        free = {int(k): float(v) for k, v in (metrics.get(assemble_metrics, {}).get("free_running_val_mse") or {}).items()}
        return Variant(name=name, params=params, layer_mse=layer_mse, free_mse=free, metrics=other,
                       layer_nmse=layer_nmse, timings=timings)

    out, workspace = [], None
    for entry in entries:
        rev = entry.get("rev", "")
        base = one("workspace" if rev == "workspace" else entry.get("name") or rev[:7], entry.get("data") or {})
        if rev == "workspace":
            workspace = base
        elif base is not None:
            out.append(base)
        for exp in entry.get("experiments") or []:
            for r in exp.get("revs") or []:
                v = one(r.get("name") or exp.get("name") or r.get("rev", "")[:7], r.get("data") or {})
                if v is not None:
                    out.append(v)
    # the workspace counts only where it holds an uncommitted run, not a copy of its commit's
    if workspace is not None and not any(_same_run(workspace, v) for v in out):
        out.insert(0, workspace)
    return out


def _same_run(a, b) -> bool:
    return (a.params, a.layer_mse, a.free_mse, a.metrics) == (b.params, b.layer_mse, b.free_mse, b.metrics)


@app.command()
@one_line_errors
def main(
    exp_json: Path = typer.Option(None, help="a saved `dvc exp show --json` (default: run it now)"),
    params: Path = typer.Option(PARAMS, help="params.yaml (paths.reports)"),
    out: Path = typer.Option(None, help="markdown table (default: <paths.reports>/ablations.md)"),
    plot: Path = typer.Option(None, help="per-layer MSE plot (default: <paths.reports>/plots/ablations_layer_mse.png)"),
    metric: list[str] = typer.Option([], help="extra metric columns, flattened keys such as "
                                     "finetune.val_ppl (absent ones show as –)"),
    num: int = typer.Option(1, help="commits back from HEAD whose experiments to include (dvc exp show -n)"),
    only: list[str] = typer.Option([], help="keep only these variants (experiment or branch names), in this order"),
    max_layer: int = typer.Option(0, help="compare layers 1..N only, e.g. for experiments run up to distill@N (0: all)"),
    free: bool = typer.Option(True, help="show the assembled student's free-running MSE (--no-free when some "
                                          "experiments stopped before assemble)"),
) -> None:
    """Table and plot of per-layer distillation MSE across DVC experiments."""
    from hyena.core.io import atomic_write_text
    from hyena.evaluate.ablations import markdown_table, plot_layer_mse

    p = paths(load_params(params))
    out = out or Path(p.reports) / "ablations.md"
    plot = plot or p.plot("ablations_layer_mse")
    if exp_json is not None:
        entries = json.loads(exp_json.read_text())
    else:
        proc = subprocess.run(["dvc", "exp", "show", "--json", "-n", str(num)], capture_output=True, text=True)
        if proc.returncode != 0:
            raise StageError(f"dvc exp show failed: {(proc.stderr.strip().splitlines() or ['?'])[-1]}")
        entries = json.loads(proc.stdout)
    variants = variants_from_exp_show(entries, p.reports)
    if only:
        by_name = {v.name: v for v in reversed(variants)}  # the newest of a name wins
        missing = [n for n in only if n not in by_name]
        if missing:
            raise StageError(f"no experiment with metrics named {', '.join(missing)}; have: {', '.join(by_name)}")
        variants = [by_name[n] for n in only]
    for v in variants:
        if max_layer > 0:
            v.layer_mse = {k: x for k, x in v.layer_mse.items() if k <= max_layer}
            v.free_mse = {k: x for k, x in v.free_mse.items() if k <= max_layer}
        if not free:
            v.free_mse = {}
    if not variants:
        raise StageError("no experiment with metrics: run `dvc repro` or `dvc exp run` first")
    table = markdown_table(variants, metric, IGNORE)
    atomic_write_text(out, "# Ablations\n\nPer-layer validation MSE of each distillation stage and of the "
                      "assembled student run free (teacher's embeddings in, student layers only).\n\n"
                      f"![per-layer MSE]({Path(plot).relative_to(out.parent) if plot.is_relative_to(out.parent) else plot})\n\n"
                      + table)
    plot_layer_mse(variants, plot, IGNORE)
    typer.echo(table)
    typer.echo(f"{len(variants)} variants -> {out}, {plot}")


if __name__ == "__main__":
    app()
