"""Stage `finetune`: cross-entropy training of the whole MSE-distilled student (optional logit KL)."""

from __future__ import annotations

from pathlib import Path

from pipeline.lm_stage import load_input_student, load_split, model_hash, run, steps_for_epochs
from pipeline.params import PARAMS_OPTION, Params, command, stage_app

app = stage_app()


@command(app)
def main(params_file: Path = PARAMS_OPTION) -> None:
    from hyena.teachers import load_teacher
    from hyena.train.lm import FinetuneConfig

    params = Params.read(params_file)
    cfg, p = params.get("finetune", FinetuneConfig), params.paths
    src = p.student("distilled")
    n_train = len(load_split(p.tokens, "train", cfg.max_sequences))
    steps = steps_for_epochs(n_train, cfg.batch_size, cfg.epochs, "finetune")
    model = load_input_student(src, p.tokens, "rerun the assemble stage")
    inputs = {"input_model": model_hash(src)}
    teacher = None
    if cfg.kl_weight > 0:
        teacher = load_teacher(str(params.teacher_dir()))
        inputs["teacher"] = model_hash(params.teacher_dir())
    run("finetune", model, cfg, steps, p, p.student("finetuned"), src, inputs=inputs, teacher=teacher)


if __name__ == "__main__":
    app()
