"""Stage `finetune`: cross-entropy training of the whole MSE-distilled student (optional logit KL)."""

from __future__ import annotations

from pathlib import Path

from hyena.data.store import ActivationStore
from hyena.teachers import load_teacher
from hyena.train.batches import steps_for_epochs
from hyena.train.checkpoint import model_hash
from hyena.train.lm import FinetuneConfig
from pipeline.lm_stage import load_input_student, load_split, run
from pipeline.params import PARAMS_OPTION, Params, StageError, command, stage_app

app = stage_app()


@command(app)
def main(params_file: Path = PARAMS_OPTION) -> None:
    params = Params.read(params_file)
    cfg, p = params.get("finetune", FinetuneConfig), params.paths
    src = p.student("distilled")
    n_train = len(load_split(p.tokens, "train", cfg.max_sequences))
    steps = steps_for_epochs(n_train, cfg.batch_size, cfg.epochs, "finetune")
    model = load_input_student(src, p.tokens, "rerun the assemble stage")
    inputs = {"input_model": model_hash(src)}
    teacher, topk = _teacher_signal(cfg, params, n_train, inputs)
    run("finetune", model, cfg, steps, p, p.student("finetuned"), src, inputs=inputs, teacher=teacher, teacher_topk=topk)


def _teacher_signal(cfg, params, n_train: int, inputs: dict):
    """(online teacher, cached top-k logits): what the KL term needs, or (None, None) without one.
    What it came from joins `inputs` (the checkpoint fingerprint)."""
    if cfg.kl_weight == 0:
        return None, None
    if cfg.kl_source == "online":
        inputs["teacher"] = model_hash(params.teacher_dir())
        return load_teacher(str(params.teacher_dir())), None
    store = ActivationStore.open(params.paths.activations)
    try:
        values, ids = store.logits("train")
    except KeyError as err:
        raise StageError(f"finetune.kl_source is cached but {err.args[0]}, or use kl_source: online") from None
    if values.shape[0] < n_train:
        raise StageError(f"finetune trains on {n_train} sequences but the dump cached teacher logits for "
                         f"{values.shape[0]}: set finetune.max_sequences <= dump.train_sequences")
    inputs["teacher_logits"] = store.attrs["fingerprint"]
    return None, (values, ids)


if __name__ == "__main__":
    app()
