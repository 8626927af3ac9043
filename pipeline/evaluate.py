"""`eval` stage: perplexity (paper Table 1, plus longer contexts), perplexity by position inside
long documents, passkey retrieval and zero-shot lm-eval tasks (Table 2).

As a DVC stage it evaluates `eval.models` and writes paths.eval/{metrics.json, results.json,
report.md, ppl.png, ppl_vs_context.png, ppl_by_position.png}. As a CLI it evaluates any model:

    python -m pipeline.evaluate --model mine=path/to/hf_dir --model pythia=EleutherAI/pythia-70m --out data/eval_mine
"""

from __future__ import annotations

import os
from pathlib import Path

import typer
import yaml

from hyena.evaluate.config import EvalConfig
from hyena.evaluate.runner import evaluate_models, write_outputs
from hyena.teachers import teacher_record
from pipeline.params import PARAMS_OPTION, Params, StageError, command, stage_app

app = stage_app()


def untracked_inputs(cfg: EvalConfig, dvc_yaml: Path = Path("dvc.yaml")) -> list[str]:
    """The keys of `cfg.local_inputs()` whose files the eval stage of `dvc_yaml` does not list as
    deps (itself or a folder above it): DVC would not rerun eval when they change. Templated deps
    (${...}) are skipped; without a dvc.yaml or an eval stage there is nothing to check."""
    try:
        deps = yaml.safe_load(dvc_yaml.read_text())["stages"]["eval"]["deps"]
    except (OSError, KeyError, TypeError, yaml.YAMLError):
        return []
    listed = {Path(os.path.normpath(d)) for d in deps if isinstance(d, str) and "${" not in d}
    return [key for key, files in cfg.local_inputs().items()
            if any(not listed & {p, *p.parents} for p in (Path(os.path.normpath(f)) for f in files))]


def _parse_models(specs: list[str]) -> dict[str, str]:
    models = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            raise StageError(f"--model expects NAME=PATH (an HF dir, .gguf file, hub id or 'teacher'), got {spec!r}")
        models[name] = path
    return models


@command(app)
def main(
    params_file: Path = PARAMS_OPTION,
    model: list[str] = typer.Option([], "--model", "-m", help="NAME=PATH to evaluate instead of eval.models (repeatable)"),
    out: Path = typer.Option(None, help="output directory (default: paths.eval)"),
    tasks: str = typer.Option(None, help="comma-separated task keys overriding eval.tasks; '' skips lm-eval"),
    limit: int = typer.Option(None, help="examples per task overriding eval.limit (0 = all)"),
    max_windows: int = typer.Option(None, help="perplexity windows overriding eval.max_windows (0 = all)"),
) -> None:
    """Evaluate models: token perplexity on eval.datasets (WikiText, OWT, yours), longer contexts, lm-eval zero-shot accuracy."""
    params = Params.read(params_file)
    cfg, p = params.get("eval", EvalConfig), params.paths
    cfg.override(_parse_models(model), tasks, limit, max_windows)
    specs = dict(cfg.models)
    cfg.models = {name: p.model_source(spec) for name, spec in specs.items()}
    labels = {name: f"teacher ({teacher_record(p.teacher).get('source', p.teacher)})"
              for name, spec in specs.items() if spec == "teacher"}
    if not model and out is None:  # the DVC stage
        for key in untracked_inputs(cfg):
            typer.echo(f"warning: {key} is not a dep of the eval stage in dvc.yaml: DVC will not rerun eval "
                       "when it changes; list its path under stages.eval.deps", err=True)
    results = evaluate_models(cfg, tokens_dir=p.tokens, labels=labels, tokenizer_fallback=p.teacher)
    written = write_outputs(results, out or Path(p.eval), reference=cfg.reference)
    typer.echo(f"wrote {', '.join(str(f) for f in written.values())}")


if __name__ == "__main__":
    app()
