"""`hyena-distill rank-layers`: which attention layers a hybrid student should keep.

    hyena-distill rank-layers --k 7        # after `dvc repro assemble` of a pure-Hyena recipe

Swaps each Hyena layer of a distilled student, alone, into the teacher and measures what it
costs on held-out rows (next-token loss and KL to the teacher); the k costliest layers are the
suggested `student.keep_attention`. Writes <paths.reports>/metrics/layer_substitution.json.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import typer

from hyena.data.tokens import load_tokens
from hyena.evaluate.substitution import layers_to_keep, substitution_costs
from hyena.model.modeling import HyenaStudentForCausalLM
from hyena.teachers import load_teacher
from pipeline.params import PARAMS, Params, StageError, one_line_errors, write_metrics

app = typer.Typer(add_completion=False)


@app.command()
@one_line_errors
def main(
    k: int = typer.Option(7, min=1, help="how many attention layers to keep"),
    model: str = typer.Option("distilled", help="student to rank: a name under paths.students or an HF dir"),
    sequences: int = typer.Option(8, min=1, help="validation rows of the tokenize stage to measure on"),
    params_file: Path = typer.Option(PARAMS, "--params", help="params.yaml"),
) -> None:
    """Rank the student's Hyena layers by what each costs the teacher when substituted alone."""
    params = Params.read(params_file)
    p = params.paths
    src = Path(model) if Path(model).is_dir() else p.student(model)
    if not (src / "config.json").is_file():
        raise StageError(f"no student at {src}: run `dvc repro assemble` first or pass --model DIR")
    student = HyenaStudentForCausalLM.from_pretrained(src).eval()
    if len(student.hyena_layers()) <= k:
        raise StageError(f"{src} has {len(student.hyena_layers())} Hyena layers: nothing to rank for k={k}")
    teacher = load_teacher(str(params.teacher_dir()))
    tokens = torch.from_numpy(np.asarray(load_tokens(p.tokens, "val")[:sequences], dtype=np.int64))
    costs = substitution_costs(teacher, student, tokens)
    keep = layers_to_keep(costs, k)
    write_metrics(p.metrics("layer_substitution"), {"student": str(src), "sequences": len(tokens), "costs": costs,
                                                    "keep_attention": keep})
    for c in sorted(costs[1:], key=lambda c: -c["kl"]):
        typer.echo(f"layer {c['layer']:2d}: loss {c['loss']:.4f} (teacher {costs[0]['loss']:.4f}), KL {c['kl']:.4f}")
    typer.echo(f"student.keep_attention: {keep}")


if __name__ == "__main__":
    app()
