"""Stage `finetune`: cross-entropy training of the whole MSE-distilled student (optional logit KL)."""

from __future__ import annotations

from pathlib import Path

from pipeline.lm_stage import load_split, run, steps_for_epochs
from pipeline.params import PARAMS_OPTION, Params, command, stage_app

app = stage_app()


@command(app)
def main(params_file: Path = PARAMS_OPTION) -> None:
    from hyena.student import HyenaStudentForCausalLM
    from hyena.teachers import load_teacher
    from hyena.train.lm import FinetuneConfig

    params = Params.read(params_file)
    cfg, p = params.get("finetune", FinetuneConfig), params.paths
    src = p.student("distilled")
    model = HyenaStudentForCausalLM.from_pretrained(src)
    steps = steps_for_epochs(len(load_split(p.tokens, "train", cfg.max_sequences)), cfg.batch_size, cfg.epochs)
    teacher = load_teacher(str(params.teacher_dir())) if cfg.kl_weight > 0 else None
    run("finetune", model, cfg, steps, p, p.student("finetuned"), src, teacher=teacher)


if __name__ == "__main__":
    app()
