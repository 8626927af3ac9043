"""Compare training variants (ablations) layer by layer: a markdown table and one plot.

A variant is one run of the pipeline under some params: its distinguishing params, the
validation MSE each distillation stage reached per layer, the free-running MSE of the assembled
student per layer, and any other scalar metrics (perplexities). Where the variants come from
(DVC experiments, directories) is the caller's business; this module only compares them.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hyena.evaluate.plots import _save


@dataclass
class Variant:
    name: str
    params: dict[str, Any]  # flattened: {"distill.lr": 0.001, ...}
    layer_mse: dict[int, float] = field(default_factory=dict)  # layer -> stage val MSE of the layer output after training
    free_mse: dict[int, float] = field(default_factory=dict)  # layer -> free-running val MSE (assembled)
    metrics: dict[str, float] = field(default_factory=dict)  # other scalars, flattened
    layer_nmse: dict[int, float] = field(default_factory=dict)  # layer -> normalised layer-output MSE after training
    timings: dict[str, float] = field(default_factory=dict)  # stage -> wall seconds
    attention_nmse: dict[int, float] = field(default_factory=dict)  # layer -> mixer vs attention output nMSE (target mixer_output)


def flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}; lists are kept as values."""
    if not isinstance(obj, dict):
        return {prefix: obj}
    out: dict[str, Any] = {}
    for key, value in obj.items():
        out.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def differing_params(variants: list[Variant], ignore: tuple[str, ...] = ()) -> list[str]:
    """Param keys whose value is not the same in every variant (what the ablation varies)."""
    keys = sorted({k for v in variants for k in v.params})
    return [k for k in keys
            if not k.startswith(ignore) and len({repr(v.params.get(k)) for v in variants}) > 1]


def _fmt(x: Any) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    if isinstance(x, float):
        return f"{x:.4g}"
    return str(x)


def render_table(first: str, variants: list[Variant], diff: list[str], param_cell: Callable[[dict, str], str],
                 columns: list[tuple[str, Callable[[Variant], str]]]) -> str:
    """The markdown table every comparison writes: one row per variant, its name under `first`, the
    params that differ (`diff`, each cell `param_cell(variant params, key)`), then one cell per (header, cell) column."""
    head = [first, *diff, *(h for h, _ in columns)]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for v in variants:
        rows.append("| " + " | ".join([v.name, *(param_cell(v.params, k) for k in diff),
                                       *(cell(v) for _, cell in columns)]) + " |")
    return "\n".join(rows) + "\n"


def layer_table(variants: list[Variant], metric_keys: list[str] = (), ignore: tuple[str, ...] = ()) -> str:
    """One row per variant: the params that differ, mean/last-layer MSE (stage and free-running), metrics."""
    def mean(v):
        return sum(v.layer_mse.values()) / len(v.layer_mse) if v.layer_mse else None

    def last(v):
        return v.layer_mse.get(max(v.layer_mse)) if v.layer_mse else None

    def free_last(v):
        return v.free_mse.get(max(v.free_mse)) if v.free_mse else None

    columns = [("layers", lambda v: str(len(v.layer_mse))), ("mean stage val MSE", lambda v: _fmt(mean(v))),
               ("last layer stage val MSE", lambda v: _fmt(last(v))),
               ("last layer free-running MSE", lambda v: _fmt(free_last(v))),
               *((k, lambda v, k=k: _fmt(v.metrics.get(k))) for k in metric_keys)]
    return render_table("variant", variants, differing_params(variants, ignore),
                        lambda params, k: _fmt(params.get(k)), columns)


def plot_variants_layer_mse(variants: list[Variant], path: str | Path, ignore: tuple[str, ...] = ()) -> None:
    """Validation MSE per layer (log scale), one line per variant: stage (solid) and free-running (dashed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt


    diff = differing_params(variants, ignore)
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for i, v in enumerate(variants):
        label = v.name + (" (" + ", ".join(f"{k.split('.')[-1]}={_fmt(v.params.get(k))}" for k in diff) + ")" if diff else "")
        color = f"C{i % 10}"
        if v.layer_mse:
            xs = sorted(v.layer_mse)
            ax.plot(xs, [v.layer_mse[x] for x in xs], marker="o", ms=3, color=color, label=label)
        if v.free_mse:
            xs = sorted(v.free_mse)
            ax.plot(xs, [v.free_mse[x] for x in xs], ls="--", color=color, alpha=0.7)
    ax.set_yscale("log")
    ax.set_xlabel("layer")
    ax.set_ylabel("validation MSE vs teacher layer output")
    free = any(v.free_mse for v in variants)
    ax.set_title("Per-layer distillation: stage MSE" + (" (solid), assembled free-running (dashed)" if free else ""))
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    _save(fig, path)
