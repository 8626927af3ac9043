"""Compare whole recipes (one pipeline run each): perplexities against the teacher, per-layer error,
distilled vs from-scratch, and what each stage cost in wall time. A markdown table and one plot.

Input: `Variant`s (hyena.evaluate.ablations) whose `metrics` hold the eval stage's flat metrics
under `metrics.<key>` (`metrics.ppl/owt/finetuned`, ...), `layer_nmse` the per-layer normalised
layer-output MSE of the distill stages, and `timings` the wall seconds of each stage.
"""

from __future__ import annotations

import math
from pathlib import Path

from hyena.evaluate.ablations import Variant, differing_params, render_table
from hyena.evaluate.plots import _save
from hyena.evaluate.positions import bucket_start

STUDENTS = ("distilled", "finetuned", "pretrained")


def ppl(v: Variant, dataset: str, model: str) -> float | None:
    return v.metrics.get(f"metrics.ppl/{dataset}/{model}")


def _f(x, digits: int = 1) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return f"{x:,.{digits}f}" if abs(x) < 1e4 else f"{x:,.0f}"


def _ratio(a, b) -> float | None:
    return a / b if a is not None and b else None


def _mean(xs) -> float | None:
    xs = [x for x in xs if not math.isnan(x)]
    return sum(xs) / len(xs) if xs else None


def row_values(v: Variant) -> dict:
    """The numbers of one recipe's row (None where the run did not produce them)."""
    teacher = {ds: ppl(v, ds, "teacher") for ds in ("owt", "wikitext")}
    nmse = [x for x in v.layer_nmse.values() if not math.isnan(x)]
    out = {f"{ds}_{m}": ppl(v, ds, m) for ds in ("owt", "wikitext") for m in ("teacher", *STUDENTS)}
    out.update({
        "owt_ft_over_teacher": _ratio(out["owt_finetuned"], teacher["owt"]),
        "wikitext_ft_over_teacher": _ratio(out["wikitext_finetuned"], teacher["wikitext"]),
        "owt_distilled_over_scratch": _ratio(out["owt_distilled"], out["owt_pretrained"]),
        "owt_finetuned_over_scratch": _ratio(out["owt_finetuned"], out["owt_pretrained"]),
        "nmse_mean": sum(nmse) / len(nmse) if nmse else None,
        "nmse_max": max(nmse) if nmse else None,
        "nmse_above_1": sum(x >= 1 for x in nmse) if nmse else None,
        "attn_nmse_mean": _mean(v.attention_nmse.values()),
        "distill_s": sum(s for k, s in v.timings.items() if k.startswith("distill_")) or None,
        "finetune_s": v.timings.get("finetune"),
        "pretrain_s": v.timings.get("pretrain"),
        "state_mib": (v.metrics["recurrent.state_bytes_per_sequence"] / 2**20
                      if "recurrent.state_bytes_per_sequence" in v.metrics else None),
        **long_context_values(v),
    })
    return out


def long_context_values(v: Variant) -> dict:
    """The fine-tuned student's perplexity / teacher's in the last position bucket of the eval's
    curve (e.g. 4K-8K) and in its first (0-256), and its passkey accuracy at the longest length."""
    ratios = {k.split("/")[1]: x for k, x in v.metrics.items() if k.startswith("metrics.pos_ratio/") and k.endswith("/finetuned")}
    passkey = [k for k in v.metrics if k.startswith("metrics.passkey/") and k.endswith("/finetuned")]
    longest = max(passkey, key=lambda k: int(k.split("/")[1]), default=None)
    labels = sorted(ratios, key=bucket_start)  # by position: `dvc exp show` sorts keys as text (4K-8K < 512-1K)
    return {"pos_last_label": labels[-1] if labels else None, "pos_last_ratio": ratios[labels[-1]] if labels else None,
            "pos_first_ratio": ratios[labels[0]] if labels else None,
            "passkey_len": int(longest.split("/")[1]) if longest else None,
            "passkey_acc": v.metrics.get(longest) if longest else None}


def recipe_table(variants: list[Variant], ignore: tuple[str, ...] = ()) -> str:
    """One row per recipe (`render_table`), then the teacher's perplexities."""
    rows = {id(v): row_values(v) for v in variants}

    def col(fn):
        return lambda v: fn(rows[id(v)])

    columns = [
        ("OWT ppl: distilled / fine-tuned / from scratch", col(lambda r: " / ".join(_f(r[f"owt_{m}"]) for m in STUDENTS))),
        ("fine-tuned / teacher (OWT)", col(lambda r: _f(r["owt_ft_over_teacher"], 2) + "x")),
        ("WikiText fine-tuned (/ teacher)",
         col(lambda r: f"{_f(r['wikitext_finetuned'])} ({_f(r['wikitext_ft_over_teacher'], 2)}x)")),
        ("distilled / from scratch (OWT)", col(lambda r: _f(r["owt_distilled_over_scratch"], 2))),
        ("layer nMSE mean / max / layers >= 1", col(lambda r: f"{_f(r['nmse_mean'], 2)} / {_f(r['nmse_max'], 2)} / "
                                                            f"{r['nmse_above_1'] if r['nmse_above_1'] is not None else '–'}")),
        ("attention-output nMSE mean", col(lambda r: _f(r["attn_nmse_mean"], 2))),
        ("fine-tuned / teacher by position: first / last bucket",
         col(lambda r: f"{_f(r['pos_first_ratio'], 1)}x / {_f(r['pos_last_ratio'], 1)}x ({r['pos_last_label']})"
             if r["pos_last_label"] else "–")),
        ("passkey, fine-tuned (longest)",
         col(lambda r: f"{_f(r['passkey_acc'], 2)} @ {r['passkey_len']}" if r["passkey_len"] else "–")),
        ("recurrent state MiB/sequence (mixers; kept attention adds its KV cache)", col(lambda r: _f(r["state_mib"], 1))),
        ("wall s: distill / finetune / pretrain",
         col(lambda r: " / ".join(_f(r[k], 0) for k in ("distill_s", "finetune_s", "pretrain_s")))),
    ]
    table = render_table("recipe", variants, differing_params(variants, ignore),
                         lambda params, k: str(params.get(k, "–")), columns)
    teachers = {f"{ds}": next((ppl(v, ds, "teacher") for v in variants if ppl(v, ds, "teacher")), None)
                for ds in ("owt", "wikitext")}
    return table + f"\nTeacher perplexity: OWT {_f(teachers['owt'])}, WikiText {_f(teachers['wikitext'])}.\n"


def plot_recipes(variants: list[Variant], path: str | Path) -> None:
    """Left: OWT perplexity of each recipe's distilled, fine-tuned and from-scratch student (log
    scale, the teacher as a line); right: normalised layer-output MSE per layer, one line a recipe."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt


    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4.5), gridspec_kw={"width_ratios": [1.2, 1]})
    width = 0.8 / len(STUDENTS)
    for j, model in enumerate(STUDENTS):
        xs = [i + (j - 1) * width for i in range(len(variants))]
        ys = [ppl(v, "owt", model) or float("nan") for v in variants]
        bars = left.bar(xs, ys, width, label=model)
        left.bar_label(bars, fmt="%.0f", fontsize=6)
    teacher = next((ppl(v, "owt", "teacher") for v in variants if ppl(v, "owt", "teacher")), None)
    if teacher:
        left.axhline(teacher, color="k", ls="--", lw=1, label=f"teacher ({teacher:.1f})")
    left.set_xticks(range(len(variants)), [v.name for v in variants], rotation=20, ha="right", fontsize=8)
    left.set_yscale("log")
    left.set_ylabel("OWT token perplexity")
    left.set_title("Students per recipe")
    left.legend(fontsize=7)
    for i, v in enumerate(variants):
        if v.layer_nmse:
            xs = sorted(v.layer_nmse)
            right.plot(xs, [v.layer_nmse[x] for x in xs], marker="o", ms=2.5, color=f"C{i % 10}", label=v.name)
    right.axhline(1.0, color="grey", ls=":", lw=1)
    right.set_yscale("log")
    right.set_xlabel("layer")
    right.set_ylabel("layer-output MSE / target mean square")
    right.set_title("Per-layer distillation error (validation)")
    right.legend(fontsize=7)
    right.grid(alpha=0.3)
    _save(fig, path)
