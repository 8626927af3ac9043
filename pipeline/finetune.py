"""Stage `finetune`: cross-entropy training of the whole MSE-distilled student (optional logit KL)."""

from __future__ import annotations

from pathlib import Path

from pipeline.lm_stage import load_split, run, steps_for_epochs
from pipeline.params import PARAMS_OPTION, Params, StageError, command, stage_app

app = stage_app()


@command(app)
def main(params_file: Path = PARAMS_OPTION) -> None:
    from hyena.student import HyenaStudentForCausalLM
    from hyena.train.lm import FinetuneConfig

    params = Params.read(params_file)
    cfg, p = params.get("finetune", FinetuneConfig), params.paths
    src = p.student("distilled")
    model = HyenaStudentForCausalLM.from_pretrained(src)
    n_train = len(load_split(p.tokens, "train", cfg.max_sequences))
    steps = steps_for_epochs(n_train, cfg.batch_size, cfg.epochs)
    teacher, topk = _teacher_signal(cfg, params, n_train)
    run("finetune", model, cfg, steps, p, p.student("finetuned"), src, teacher=teacher, teacher_topk=topk)


def _teacher_signal(cfg, params, n_train: int):
    """(online teacher, cached top-k logits): what the KL term needs, or (None, None) without one."""
    from hyena.store import ActivationStore
    from hyena.teachers import load_teacher

    if cfg.kl_weight == 0:
        return None, None
    if cfg.kl_source == "online":
        return load_teacher(str(params.teacher_dir())), None
    store = ActivationStore.open(params.paths.activations)
    try:
        values, ids = store.logits("train")
    except KeyError as err:
        raise StageError(f"finetune.kl_source is cached but {err.args[0]}, or use kl_source: online") from None
    if values.shape[0] < n_train:
        raise StageError(f"finetune trains on {n_train} sequences but the dump cached teacher logits for "
                         f"{values.shape[0]}: set finetune.max_sequences <= dump.train_sequences")
    return None, (values, ids)


if __name__ == "__main__":
    app()
