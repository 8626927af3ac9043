"""Markdown report and flat DVC metrics from an evaluation results dict.

Results layout (what `hyena.evaluate.runner.evaluate_models` returns and results.json holds):

    {"settings": {...},
     "models": {name: {"path": str, "n_params": int, "max_positions": int | None,
                       "ppl": {dataset: {str(context): PerplexityResult dict | {"na": reason}}},
                       "tasks": {task: {"acc", "acc_stderr", ["acc_norm", "acc_norm_stderr"], "n"}}}}}

Table 1 reproduces the paper's perplexity table (models x {WikiText, OWT}); Table 2 its
zero-shot accuracy table (tasks x models). Both carry the paper's published numbers as extra
columns; Table 2 also the official lm-eval results of Pythia-70M (the paper's teacher).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from hyena.evaluate.harness import TASKS

# Scavenging Hyena, Table 1: perplexity at context 1024 (WikiText test, OpenWebText val).
PAPER_PPL = {
    "teacher": {"wikitext": 51.4, "owt": 35.3},  # Pythia-70M
    "pretrained": {"wikitext": 230.0, "owt": 64.9},  # Hyena trained from scratch
    "distilled": {"wikitext": 155.8, "owt": 63.5},  # MSE-distilled
    "finetuned": {"wikitext": 121.2, "owt": 49.6},  # MSE + CE fine-tune
}
PAPER_PPL_LABEL = {
    "teacher": "Pythia-70M teacher", "pretrained": "pre-trained Hyena",
    "distilled": "MSE-distilled", "finetuned": "MSE + CE fine-tune",
}
# Scavenging Hyena, Table 2: zero-shot accuracy, fp32.
PAPER_ACC = {
    "Hyena-GPT": {"arc_challenge": .1775, "arc_easy": .3998, "logiqa": .1966, "piqa": .5832, "sciq": .5910, "winogrande": .5004, "wsc": .3750},
    "Pythia-70M": {"arc_challenge": .1749, "arc_easy": .3754, "logiqa": .2104, "piqa": .5985, "sciq": .6400, "winogrande": .5296, "wsc": .3654},
    "distilled": {"arc_challenge": .1792, "arc_easy": .3270, "logiqa": .1982, "piqa": .5408, "sciq": .3570, "winogrande": .4886, "wsc": .5865},
}
DATASET_LABEL = {"wikitext": "WikiText", "owt": "OWT"}
TEACHER = "teacher"


def load_reference(path: str | Path) -> dict[str, dict]:
    """Published lm-eval results JSON ({"results": {task: {acc, acc_stderr, ...}}}) for our task keys."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"reference results not found: {path} (set eval.reference, or '' to leave the column out)")
    results = json.loads(path.read_text()).get("results", {})
    return {k: results[k] for k in TASKS if k in results}


def _fmt(x, digits: int = 1) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def ppl_value(model: dict, dataset: str, context: int) -> float | None:
    entry = model.get("ppl", {}).get(dataset, {}).get(str(context))
    return entry.get("ppl") if entry else None


def ppl_cell(model: dict, dataset: str, context: int) -> str:
    entry = model.get("ppl", {}).get(dataset, {}).get(str(context))
    if entry is None:
        return "–"
    return f"n/a ({entry['na']})" if "na" in entry else _fmt(entry["ppl"], 1 if entry["ppl"] < 1e4 else 0)


def flat_metrics(results: dict) -> dict[str, float]:
    """Flat numeric keys for DVC (`dvc exp show`): ppl/<dataset>/<model>, ppl_ctx<C>/..., acc/<task>/<model>, ..."""
    s = results["settings"]
    models = results["models"]
    out: dict[str, float] = {}
    teacher = models.get(TEACHER)
    for name, m in models.items():
        for ds, by_ctx in m.get("ppl", {}).items():
            for ctx, entry in by_ctx.items():
                if "ppl" not in entry:
                    continue
                key = "ppl" if int(ctx) == s["context"] else f"ppl_ctx{ctx}"
                out[f"{key}/{ds}/{name}"] = round(entry["ppl"], 4)
            t = ppl_value(teacher, ds, s["context"]) if teacher else None
            v = ppl_value(m, ds, s["context"])
            if teacher and name != TEACHER and t and v:
                out[f"ppl_ratio/{ds}/{name}"] = round(v / t, 4)
        for task, r in m.get("tasks", {}).items():
            for metric in ("acc", "acc_norm"):
                if r.get(metric) is not None:
                    out[f"{metric}/{task}/{name}"] = round(r[metric], 4)
        out.update(_long_context_metrics(name, m, teacher))
        shipped = s.get("tasks", list(m.get("tasks", {})))  # the mean leaves a user's own tasks out
        accs = [r["acc"] for t, r in m.get("tasks", {}).items() if t in shipped and r.get("acc") is not None]
        if accs:
            out[f"acc/mean/{name}"] = round(sum(accs) / len(accs), 4)
    return out


def position_rows(model: dict) -> list[dict]:
    """The position buckets of a model's curve ([] when it has none or could not run it)."""
    return (model.get("positions") or {}).get("buckets", [])


def position_ratios(model: dict, teacher: dict | None) -> dict[str, float]:
    """{bucket label: student / teacher perplexity} where both scored the bucket."""
    t = {b["label"]: b["ppl"] for b in position_rows(teacher or {})}
    return {b["label"]: b["ppl"] / t[b["label"]] for b in position_rows(model) if t.get(b["label"])}


def _long_context_metrics(name: str, m: dict, teacher: dict | None) -> dict[str, float]:
    """pos_ppl/<bucket>/<model>, pos_ratio/<bucket>/<model> and passkey/<length>/<model>."""
    out = {f"pos_ppl/{b['label']}/{name}": round(b["ppl"], 4) for b in position_rows(m)}
    if teacher is not None and m is not teacher:
        out.update({f"pos_ratio/{k}/{name}": round(v, 4) for k, v in position_ratios(m, teacher).items()})
    out.update({f"passkey/{n}/{name}": r["acc"] for n, r in (m.get("passkey") or {}).items() if "acc" in r})
    return out


def _k(n: int | str) -> str:
    n = int(n)
    return f"{n // 1024}K" if n % 1024 == 0 else str(n)


def positions_table(results: dict) -> list[str]:
    """Perplexity by position inside long windows: one row per bucket, each model's perplexity and
    (students) its ratio to the teacher's on the same tokens."""
    models = results["models"]
    curves = {n: m for n, m in models.items() if position_rows(m)}
    if not curves:
        return []
    teacher = models.get(TEACHER)
    ratios = {n: position_ratios(m, teacher) for n, m in curves.items() if n != TEACHER and teacher}
    head = ["positions"] + list(curves) + [f"{n} / teacher" for n in ratios]
    first = next(iter(curves.values()))["positions"]  # every curve has the same windows and buckets
    lines = ["## Perplexity by position in long documents", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for i, b in enumerate(first["buckets"]):
        ppls = [position_rows(m)[i]["ppl"] for m in curves.values()]
        row = [b["label"]] + [_fmt(v, 1 if v < 1e4 else 0) for v in ppls]
        row += [_fmt(r.get(b["label"]), 2) for r in ratios.values()]
        lines.append("| " + " | ".join(row) + " |")
    missing = [f"`{n}`: {m['positions']['na']}" for n, m in models.items() if "na" in (m.get("positions") or {})]
    src = results["settings"].get("positions", {}).get("source", "?")
    lines += ["", f"{first['windows']} windows of {first['context']} tokens from `{src}` (round-robin over its "
              f"documents), {probe_precision(results)}; the token at position t is predicted from the t tokens before it in its window. "
              "A ratio that stays flat or falls past the training window means the student gains from "
              "context as its teacher does; one that rises means it does not."
              + (" Not run: " + "; ".join(missing) + "." if missing else ""), ""]
    return lines


def passkey_rows(models: dict, extra_cols: int) -> list[str]:
    """Table 2 rows "passkey @ N" (retrieved / trials per model), `extra_cols` empty cells after."""
    lengths = sorted({int(n) for m in models.values() for n in (m.get("passkey") or {})})
    rows = []
    for n in lengths:
        cells = []
        for m in models.values():
            r = (m.get("passkey") or {}).get(str(n))
            cells.append("–" if r is None else f"n/a ({r['na']})" if "na" in r else f"{r['acc']:.2f} ({r['correct']}/{r['trials']})")
        rows.append("| " + " | ".join([f"passkey @ {_k(n)} tokens"] + cells + ["–"] * extra_cols) + " |")
    return rows


def _mean_acc(tasks: dict) -> float | None:
    accs = [r["acc"] for r in tasks.values() if r.get("acc") is not None]
    return sum(accs) / len(accs) if accs else None


def dataset_names(settings: dict) -> list[str]:
    """The perplexity datasets of a run, in params order (a mapping of sources, or a plain list)."""
    return list(settings.get("datasets", ["wikitext", "owt"]))


def label(dataset: str) -> str:
    return DATASET_LABEL.get(dataset, dataset)


def table1(results: dict) -> list[str]:
    """Perplexity per model and dataset (any names), ratios to the teacher, and the paper's
    published numbers for the datasets it has (WikiText, OWT: matched by name)."""
    s, models = results["settings"], results["models"]
    ctx, datasets = s["context"], dataset_names(s)
    in_paper = [d for d in datasets if d in PAPER_PPL[TEACHER]]
    teacher = models.get(TEACHER)
    head = ["model"] + [label(d) for d in datasets]
    head += [f"{label(d)} / teacher" for d in datasets]
    head += [f"paper {label(d)}" for d in in_paper] + [f"paper {label(d)} / teacher" for d in in_paper]
    lines = [f"## Table 1: perplexity at context {ctx}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, m in models.items():
        row = [f"{name}"] + [ppl_cell(m, d, ctx) for d in datasets]
        for d in datasets:
            t, v = (ppl_value(teacher, d, ctx) if teacher else None), ppl_value(m, d, ctx)
            row.append(_fmt(v / t, 2) if t and v else "–")
        paper = PAPER_PPL.get(name, {})
        row += [_fmt(paper.get(d)) for d in in_paper]
        row += [_fmt(paper[d] / PAPER_PPL[TEACHER][d], 2) if d in paper else "–" for d in in_paper]
        lines.append("| " + " | ".join(row) + " |")
    if in_paper:
        lines += ["", "Paper rows: " + ", ".join(f"`{k}` = {v}" for k, v in PAPER_PPL_LABEL.items())
                  + " (Pythia-70M teacher, RTX 3090; matched to our models by name, to our datasets by name: "
                  + ", ".join(f"`{d}`" for d in in_paper) + ")."]
    return lines + [""]


def long_context_table(results: dict) -> list[str]:
    s, models = results["settings"], results["models"]
    contexts = [s["context"], *[c for c in s.get("long_contexts", []) if c != s["context"]]]
    if len(contexts) < 2:
        return []
    lines = ["## Perplexity against context length", ""]
    for ds in s.get("long_context_datasets", []):
        head = ["model", "max positions"] + [str(c) for c in contexts]
        lines += [f"**{label(ds)}**", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for name, m in models.items():
            mp = m.get("max_positions")
            lines.append("| " + " | ".join([name, str(mp) if mp else "–"] + [ppl_cell(m, ds, c) for c in contexts]) + " |")
        lines.append("")
    lines += ["A transformer teacher degrades past its trained length (`max positions`); a Hyena student "
              "runs up to its filters' `hyena.max_len`; `n/a (reason)` marks a context a model cannot run "
              "or the data cannot fill. Each context scores the first `long_max_windows` windows of the stream, so with few "
              "windows the contexts score different tokens: set `eval.long_max_windows: 0` for a like-for-like curve.", ""]
    return lines


def _acc_cell(r: dict | None) -> str:
    if not r or r.get("acc") is None:
        return "–"
    cell = f"{r['acc']:.4f}"
    if r.get("acc_stderr") is not None:
        cell += f" ± {r['acc_stderr']:.4f}"
    if r.get("acc_norm") is not None:
        cell += f" (norm {r['acc_norm']:.4f})"
    return cell


def _task_row(label: str, t: str, models: dict, reference: dict | None) -> str:
    row = [label] + [f"n/a ({m['tasks_na']})" if m.get("tasks_na") else _acc_cell(m.get("tasks", {}).get(t))
                     for m in models.values()]
    row += [_fmt(PAPER_ACC[k].get(t), 4) for k in PAPER_ACC]
    if reference:
        row.append(_acc_cell(reference.get(t)))
    return "| " + " | ".join(row) + " |"


def table2(results: dict, reference: dict | None) -> list[str]:
    """Zero-shot accuracy per task (rows) and model, with the paper's columns and the Pythia-70M
    reference; the means cover eval.tasks; a user's own tasks (eval.include_path) follow as
    extra rows marked "(yours)"."""
    models = results["models"]

    def ran(t: str) -> bool:
        return any(t in m.get("tasks", {}) for m in models.values())

    tasks = [t for t in results["settings"].get("tasks", []) if ran(t)]
    extra = [t for t in results["settings"].get("user_tasks", []) if ran(t)]
    head = ["task"] + list(models) + [f"paper {k}" for k in PAPER_ACC] + (["Pythia-70M lm-eval reference"] if reference else [])
    passkey = passkey_rows(models, len(head) - 1 - len(models))
    if not tasks and not extra and not passkey:
        return []
    lines = ["## Table 2: zero-shot accuracy (fp32)", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += [_task_row(t, t, models, reference) for t in tasks]
    if not tasks:
        return lines + [_task_row(f"{t} (yours)", t, models, reference) for t in extra] + passkey + [""]
    means = {name: _mean_acc({t: m.get("tasks", {}).get(t, {}) for t in tasks}) for name, m in models.items()}
    row = ["mean acc"] + [_fmt(v, 4) for v in means.values()]
    row += [_fmt(sum(PAPER_ACC[k][t] for t in tasks if t in PAPER_ACC[k]) / max(1, sum(t in PAPER_ACC[k] for t in tasks)), 4) for k in PAPER_ACC]
    if reference:
        accs = [reference[t]["acc"] for t in tasks if t in reference]
        row.append(_fmt(sum(accs) / len(accs), 4) if accs else "–")
    lines.append("| " + " | ".join(row) + " |")
    t_mean = means.get(TEACHER)
    if t_mean:
        row = ["mean acc / teacher"] + [_fmt(v / t_mean, 3) if v else "–" for v in means.values()]
        paper_t = sum(PAPER_ACC["Pythia-70M"][t] for t in tasks) / len(tasks) if all(t in PAPER_ACC["Pythia-70M"] for t in tasks) else None
        row += [_fmt(sum(PAPER_ACC[k][t] for t in tasks) / len(tasks) / paper_t, 3) if paper_t else "–" for k in PAPER_ACC]
        if reference:
            row.append("–")
        lines.append("| " + " | ".join(row) + " |")
    lines += [_task_row(f"{t} (yours)", t, models, reference) for t in extra]  # reference: "–" (has our keys only)
    return lines + passkey + [""]


def probe_precision(results: dict) -> str:
    """How the long-context probes ran: "fp32" or "bf16 autocast (eval.probe_precision)"."""
    bf16 = results["settings"].get("probe_precision") == "bf16"
    return "bf16 autocast (eval.probe_precision)" if bf16 else "fp32"


def render_report(results: dict, reference: dict | None = None) -> str:
    """The whole markdown report (Table 1, long-context table, Table 2, how everything was computed)."""
    s = results["settings"]
    lines = ["# Evaluation report", ""]
    lines += ["Models: " + ", ".join(f"`{n}` = `{m.get('path', '?')}`" + (f" ({m['n_params'] / 1e6:.1f}M params)" if m.get("n_params") else "")
                                    for n, m in results["models"].items()), ""]
    lines += table1(results) + long_context_table(results) + positions_table(results) + table2(results, reference)
    lines += ["## How these numbers are computed", ""]
    for ds, desc in s.get("dataset_sources", {}).items():
        lines.append(f"- **{label(ds)}**: {desc}")
    methods = sorted({e["method"] for m in results["models"].values() for by_ctx in m.get("ppl", {}).values()
                      for e in by_ctx.values() if "method" in e})
    lines += [f"- Perplexity: {m}." for m in methods]
    lines += [
        "- Perplexity (Table 1) is token-level (each model's own tokenizer), fp32. lm-eval's `wikitext` task reports "
        "word-level perplexity over whole documents, which is a different (larger) number.",
        f"- lm-eval: zero-shot, fp32, task source `{s.get('task_source', '?')}`, "
        f"limit {s.get('limit') or 'none'} examples per task; `acc ± stderr`, `norm` = length-normalised accuracy (acc_norm)"
        + (f"; rows marked (yours) are the task YAMLs of `{s.get('include_path')}` (not in the means)." if s.get("user_tasks") else "."),
        "- Passkey rows (hyena/evaluate/passkey.py): a random 5-digit key stated once inside repeated filler "
        "sentences, at depths spread evenly over the prompt, asked for at the end; retrieved when greedy "
        f"decoding writes the whole key, {probe_precision(results)}; the mean accuracy leaves them out.",
        "- SciQ offline: the local copy lacks the support paragraph that lm-eval's `sciq` prompt starts with, "
        "so SciQ accuracies are not comparable with the paper's or the reference column.",
        "- Paper columns are the published numbers of the paper (Pythia-70M teacher); the reference column is "
        "the official lm-eval result of Pythia-70M. Compare ratios, not absolute values, when the teacher differs.",
        "",
    ]
    return "\n".join(lines)
