"""Stage `finetune`: cross-entropy training of the whole MSE-distilled student (optional logit KL)."""

from __future__ import annotations

from pathlib import Path

import typer

from pipeline.common import PARAMS, load_params, load_teacher_from, one_line_errors, section
from pipeline.lm_stage import LMParams, load_split, run, steps_for_epochs

app = typer.Typer(add_completion=False)


@app.command()
@one_line_errors
def main(
    params: Path = typer.Option(PARAMS, help="params.yaml"),
    tokens: Path = typer.Option(Path("data/tokens"), help="tokenize stage output"),
    student: Path = typer.Option(Path("data/students/distilled"), help="MSE-distilled student"),
    out: Path = typer.Option(Path("data/students/finetuned"), help="fine-tuned student (HF format)"),
    reports: Path = typer.Option(Path("reports"), help="metrics and DVCLive curves"),
) -> None:
    from hyena.student import HyenaStudentForCausalLM

    all_params = load_params(params)
    p = section(all_params, "finetune", LMParams)
    model = HyenaStudentForCausalLM.from_pretrained(student)
    steps = steps_for_epochs(len(load_split(tokens, "train", p.max_sequences)), p.batch_size, p.epochs)
    teacher = load_teacher_from(all_params) if p.kl_weight > 0 else None
    run("finetune", model, p, steps, tokens, out, reports, teacher=teacher)


if __name__ == "__main__":
    app()
