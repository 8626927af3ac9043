"""DVC experiments as comparable variants (hyena.evaluate.ablations.Variant): what `ablations` and
`recipes` both read."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Annotated

import typer

from hyena.core.io import atomic_write_text
from hyena.evaluate.ablations import Variant, flatten
from pipeline.params import StageError, load_params, paths

# The options `ablations` and `recipes` share: which params file, which experiments.
ParamsOption = Annotated[Path, typer.Option(help="params.yaml (paths.reports)")]
ExpJsonOption = Annotated[Path | None, typer.Option(help="a saved `dvc exp show --json` (default: run it now)")]
NumOption = Annotated[int, typer.Option(help="commits back from HEAD whose experiments to include (dvc exp show -n)")]
OnlyOption = Annotated[list[str] | None, typer.Option(help="keep only these runs (experiment or branch names), "
                                                           "in this order")]


def selected_variants(params: Path, exp_json: Path | None, num: int, only: list[str] | None, what: str,
                      keep=lambda variant: True):
    """(paths of `params`, the variants that `keep` accepts and `only` names, or all of them), with
    a clear error when none is left."""
    p = paths(load_params(params))
    variants = pick([v for v in load_variants(exp_json, num, p.reports) if keep(v)], only or [], what)
    if not variants:
        raise StageError(f"no {what} with metrics: run `dvc repro` or `dvc exp run` first")
    return p, variants


def write_markdown(out: Path, title: str, intro: str, plot: Path, table: str) -> None:
    """out: a heading, an intro, the plot (linked relative to out) and the table."""
    rel = plot.relative_to(out.parent) if plot.is_relative_to(out.parent) else plot
    atomic_write_text(out, f"# {title}\n\n{intro}![{title}]({rel})\n\n{table}")


def load_variants(exp_json: Path | None, num: int, reports: str) -> list[Variant]:
    """The variants of a saved `dvc exp show --json` file, or of running it now (`-n num`)."""
    if exp_json is not None:
        entries = json.loads(exp_json.read_text())
    else:
        proc = subprocess.run(["dvc", "exp", "show", "--json", "-n", str(num)], capture_output=True, text=True)
        if proc.returncode != 0:
            raise StageError(f"dvc exp show failed: {(proc.stderr.strip().splitlines() or ['?'])[-1]}")
        entries = json.loads(proc.stdout)
    return variants_from_exp_show(entries, reports)


def pick(variants: list[Variant], only: list[str], what: str) -> list[Variant]:
    """The variants named in `only`, in that order (all without it; the newest of a name wins);
    a clear error naming the missing ones and, with none left, one saying so (`what`: "experiment"...)."""
    if only:
        by_name = {v.name: v for v in reversed(variants)}  # the newest of a name wins
        missing = [n for n in only if n not in by_name]
        if missing:
            raise StageError(f"no {what} with metrics named {', '.join(missing)}; have: {', '.join(by_name)}")
        variants = [by_name[n] for n in only]
    return variants


def variants_from_exp_show(entries: list[dict], reports: str = "reports"):
    """`dvc exp show --json` output -> [Variant]: the workspace (if it holds a run of its own), the
    baseline commits and their experiments. Entries without metrics (queued, failed) are skipped.
    `reports` is paths.reports (metric files are keyed by their path).
    """
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
        layer_mse, layer_nmse, attention_nmse, other, timings = {}, {}, {}, {}, {}
        for path, values in metrics.items():
            if path.startswith(layer_metrics) and "val_mse" in values:
                layer = int(Path(path).stem.split("_")[-1])  # every target also reports the layer-output MSE
                layer_mse[layer] = float(values.get("val_layer_mse", values["val_mse"]))
                layer_nmse[layer] = float(values.get("val_layer_nmse", values.get("val_nmse", float("nan"))))
                if values.get("target") == "mixer_output" and not values.get("kept_attention"):
                    attention_nmse[layer] = float(values["val_nmse"])  # the mixer against the attention output
            elif f"{reports}/timings/" in path:
                timings[Path(path).stem] = sum(float(v) for v in values.values() if isinstance(v, (int, float)))
            elif path != assemble_metrics:
                other.update({f"{Path(path).stem}.{k}": v for k, v in flatten(values).items()
                              if isinstance(v, (int, float)) and not isinstance(v, bool)})
        free = {int(k): float(v) for k, v in (metrics.get(assemble_metrics, {}).get("free_running_val_mse") or {}).items()}
        return Variant(name=name, params=params, layer_mse=layer_mse, free_mse=free, metrics=other,
                       layer_nmse=layer_nmse, timings=timings, attention_nmse=attention_nmse)

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
