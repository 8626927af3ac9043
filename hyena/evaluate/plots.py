"""PNG plots of the evaluation results (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from hyena.evaluate.report import (  # noqa: E402
    TEACHER,
    dataset_names,
    label,
    position_ratios,
    position_rows,
    ppl_value,
)


def _save(fig, path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}{path.suffix}")
    fig.savefig(tmp, dpi=120, bbox_inches="tight")
    plt.close(fig)
    os.replace(tmp, path)


def plot_ppl(results: dict, path: str | Path) -> None:
    """Grouped bars: perplexity (log scale) per dataset, one bar per model; n/a bars are left out."""
    s, models = results["settings"], results["models"]
    datasets = dataset_names(s)
    fig, ax = plt.subplots(figsize=(1.8 + 1.6 * len(datasets) * max(1, len(models)) / 2, 4))
    width = 0.8 / max(1, len(models))
    plotted = False
    for i, (name, m) in enumerate(models.items()):
        xs, ys = [], []
        for j, ds in enumerate(datasets):
            v = ppl_value(m, ds, s["context"])
            if v is not None:
                xs.append(j + (i - (len(models) - 1) / 2) * width)
                ys.append(v)
        bars = ax.bar(xs, ys, width, label=name)
        ax.bar_label(bars, fmt="%.1f", fontsize=7)
        plotted = plotted or bool(ys)
    ax.set_xticks(range(len(datasets)), [label(d) for d in datasets])
    if plotted:  # a log axis without a single positive value cannot be drawn
        ax.set_yscale("log")
    ax.set_ylabel(f"token perplexity (context {s['context']})")
    ax.set_title("Perplexity per model")
    ax.legend(fontsize=8)
    _save(fig, path)


def plot_ppl_vs_context(results: dict, path: str | Path) -> None:
    """Perplexity against context length per model, one panel per dataset; the teacher's trained
    length is a dashed line."""
    s, models = results["settings"], results["models"]
    datasets = s.get("long_context_datasets") or dataset_names(s)
    contexts = sorted({s["context"], *s.get("long_contexts", [])})
    fig, axes = plt.subplots(1, max(1, len(datasets)), figsize=(5 * max(1, len(datasets)), 4), squeeze=False)
    for ax, ds in zip(axes[0], datasets, strict=False):
        plotted = False
        for name, m in models.items():
            pts = [(c, ppl_value(m, ds, c)) for c in contexts]
            pts = [(c, v) for c, v in pts if v is not None]
            if pts:
                ax.plot(*zip(*pts, strict=True), marker="o", label=name)
                plotted = True
        teacher_len = (models.get("teacher") or {}).get("max_positions")
        if teacher_len:
            ax.axvline(teacher_len, ls="--", c="grey", lw=1, label="teacher max positions")
        ax.set_xscale("log", base=2)
        if plotted:  # a log axis without a single positive value cannot be drawn
            ax.set_yscale("log")
        ax.set_xticks(contexts, [str(c) for c in contexts])
        ax.set_xlabel("context (tokens)")
        ax.set_ylabel("token perplexity")
        ax.set_title(label(ds))
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    _save(fig, path)


def plot_positions(results: dict, path: str | Path) -> None:
    """Left: perplexity by position inside long windows, per model; right: each student's ratio to
    the teacher on the same tokens. Log-log; each point is a bucket (plotted at its upper end)."""
    models = results["models"]
    teacher = models.get(TEACHER)
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for name, m in models.items():
        rows = position_rows(m)
        if rows:
            style = dict(color="black", lw=2.2) if name == TEACHER else {}
            left.plot([b["hi"] for b in rows], [b["ppl"] for b in rows], marker="o", label=name, **style)
        ratios = position_ratios(m, teacher) if teacher and name != TEACHER else {}
        if ratios:
            right.plot([b["hi"] for b in rows if b["label"] in ratios], list(ratios.values()), marker="o", label=name)
    for ax, ylabel in ((left, "token perplexity"), (right, "perplexity / teacher's")):
        ax.set_xscale("log", base=2)
        if ax.get_legend_handles_labels()[0]:
            ax.set_yscale("log")
            ax.legend(fontsize=8)
        ax.set_xlabel("position in the window (bucket's upper end, tokens)")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3, which="both")
    left.set_title("Perplexity by position (long documents)")
    right.set_title("Students against the teacher (flat = gains from context as it does)")
    _save(fig, path)


def plot_training_curves(distill: dict[str, list[tuple[float, float]]], lm: dict[str, list[tuple[float, float]]],
                         path: str | Path) -> None:
    """Left: distillation train MSE per layer (step); right: LM train loss of each run (step).

    `distill` maps a layer key to (step, mse) points; `lm` maps a run name (finetune, pretrain)
    to (step, loss) points. Layers are coloured along a colormap, shallow to deep.
    """
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.2))
    cmap = plt.get_cmap("viridis")
    keys = sorted(distill)
    for i, key in enumerate(keys):
        pts = distill[key]
        if pts:
            left.plot(*zip(*pts, strict=True), color=cmap(i / max(1, len(keys) - 1)), lw=1,
                      label=f"layer {key}" if i in (0, len(keys) - 1) or len(keys) <= 8 else None)
    left.set_yscale("log")
    left.set_xlabel("step")
    left.set_ylabel("train MSE")
    left.set_title("Distillation, per layer (shallow → deep)")
    if keys:
        left.legend(fontsize=7)
    for name, pts in sorted(lm.items()):
        if pts:
            right.plot(*zip(*pts, strict=True), marker=".", label=name)
    right.set_xlabel("step")
    right.set_ylabel("train cross-entropy (nats)")
    right.set_title("Language-model training")
    if lm:
        right.legend(fontsize=8)
    for ax in (left, right):
        ax.grid(alpha=0.3)
    _save(fig, path)


def plot_recurrent_fit(metrics: dict, path: str | Path) -> None:
    """Per layer: relative L2 error of the modal filters (left) and of each mixer's output on
    held-out windows (right, log scale), from the distill-recurrent stage's metrics."""
    layers = metrics["layers"]
    xs = [r["layer"] for r in layers]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 3.8))
    if "filter_rel_l2_mean_uncalibrated" in layers[0]:
        left.plot(xs, [r["filter_rel_l2_mean_uncalibrated"] for r in layers], marker="o", label="filter-only fit")
    left.plot(xs, [r["filter_rel_l2_mean"] for r in layers], marker="s", label="final (after calibration)"
              if "filter_rel_l2_mean_uncalibrated" in layers[0] else "filter fit")
    left.set_xlabel("layer")
    left.set_ylabel("filter relative L2 error (mean over channels)")
    left.set_title(f"Modal fit, order {metrics['order']}, {metrics['fit_len']} taps")
    left.legend(fontsize=8)
    if "calib_output_rel_err_uncalibrated" in layers[0]:
        right.plot(xs, [r["calib_output_rel_err_uncalibrated"] for r in layers], marker="o",
                   label="filter-only fit (calibration rows)")
        right.plot(xs, [r["calib_output_rel_err"] for r in layers], marker="s", label="calibrated (calibration rows)")
    right.plot(xs, [r["mixer_output_rel_err"] for r in layers], marker="^", color="C2", label="final (held-out rows)")
    right.set_yscale("log")
    right.set_xlabel("layer")
    right.set_ylabel("mixer output relative error")
    right.legend(fontsize=8)
    right.set_title(f"OWT ppl {metrics['ppl_owt_student']:.1f} conv vs {metrics['ppl_owt_recurrent']:.1f} "
                    f"recurrent ({100 * metrics['ppl_rel_diff']:+.2f}%)")
    _save(fig, path)


def plot_layer_mse(stage: dict, free: dict, path: str | Path) -> None:
    """Per layer: validation MSE of each distill stage before and after training, and of the
    assembled student run free from the embeddings (log scale)."""
    keys = sorted(stage)
    x = [int(k) for k in keys]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(x, [stage[k]["val_mse_before"] for k in keys], "o:", label="before distillation")
    ax.plot(x, [stage[k]["val_mse"] for k in keys], "o-", label=f"after (stage inputs: {stage[keys[0]]['input']})")
    ax.plot([int(k) for k in sorted(free)], [free[k] for k in sorted(free)], "s--", label="assembled, free-running")
    ax.set(xlabel="layer", ylabel="validation MSE vs teacher", yscale="log", title="Per-layer distillation error")
    ax.grid(alpha=0.3)
    ax.legend()
    _save(fig, path)
