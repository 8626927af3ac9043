"""`eval` stage: perplexity (paper Table 1, plus longer contexts) and zero-shot lm-eval tasks (Table 2).

As a DVC stage it evaluates `eval.models` and writes data/eval/{metrics.json, results.json,
report.md, ppl.png, ppl_vs_context.png}. As a CLI it evaluates any model:

    python -m pipeline.evaluate --model mine=path/to/hf_dir --model pythia=EleutherAI/pythia-70m --out data/eval_mine
"""

from __future__ import annotations

from pathlib import Path

import typer

from hyena.evaluate.runner import EvalConfig, evaluate_models, write_outputs
from pipeline.common import (
    PARAMS,
    StageError,
    load_params,
    load_teacher_from,
    one_line_errors,
    section,
)

app = typer.Typer(add_completion=False)


def _parse_models(specs: list[str]) -> dict[str, str]:
    models = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            raise StageError(f"--model expects NAME=PATH (an HF dir, .gguf file, hub id or 'teacher'), got {spec!r}")
        models[name] = path
    return models


@app.command()
@one_line_errors
def main(
    params: Path = typer.Option(PARAMS, help="params.yaml with an `eval` section (and `teacher.source`)"),
    model: list[str] = typer.Option([], "--model", "-m", help="NAME=PATH to evaluate instead of eval.models (repeatable)"),
    out: Path = typer.Option(Path("data/eval"), help="output directory"),
    tasks: str = typer.Option(None, help="comma-separated task keys overriding eval.tasks; '' skips lm-eval"),
    limit: int = typer.Option(None, help="examples per task overriding eval.limit (0 = all)"),
    max_windows: int = typer.Option(None, help="perplexity windows overriding eval.max_windows (0 = all)"),
) -> None:
    """Evaluate models: token perplexity on WikiText/OWT, longer contexts, lm-eval zero-shot accuracy."""
    raw = load_params(params)
    cfg: EvalConfig = section(raw, "eval", EvalConfig)
    if model:
        cfg.models = _parse_models(model)
    if tasks is not None:
        cfg.tasks = [t.strip() for t in tasks.split(",") if t.strip()]
    if limit is not None:
        cfg.limit = limit
    if max_windows is not None:
        cfg.max_windows = max_windows
    teacher_source = str((raw.get("teacher") or {}).get("source", ""))
    # The teacher is built exactly as the other stages build it (honours teacher.random_init/seed).
    loader = (lambda: load_teacher_from(raw)) if "teacher" in raw else None
    results = evaluate_models(cfg, teacher_source=teacher_source, teacher_loader=loader)
    paths = write_outputs(results, out, reference=cfg.reference)
    typer.echo(f"wrote {', '.join(str(p) for p in paths.values())}")


if __name__ == "__main__":
    app()
