"""Stage `assemble`: put the distilled layers into one student (the MSE-distilled model, HF format).

Also measures the free-running error (`hyena.train.distill.free_running_mse`): the assembled
student run alone from the teacher's embedding output, every layer's output against the teacher's.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer

from hyena.core.io import atomic_dir, claim_output, reading_weights
from hyena.data.store import REDUMP, ActivationStore, check_chunks
from hyena.evaluate.plots import plot_layer_mse
from hyena.model.cards import ModelCard
from hyena.model.modeling import HyenaStudentForCausalLM
from hyena.teachers import copy_tokenizer
from hyena.train.distill import DistillConfig, free_running_mse, load_distilled_layers
from pipeline.params import (
    PARAMS_OPTION,
    Params,
    StageError,
    command,
    read_chain,
    stage_app,
    write_metrics,
)

app = stage_app()


@command(app)
def main(params_file: Path = PARAMS_OPTION) -> None:
    params = Params.read(params_file)
    d, p = params.get("distill", DistillConfig), params.paths
    if d.last != max(d.layers):
        raise StageError(f"params distill.last is {d.last!r} but the last layer in distill.layers is {max(d.layers)!r}")
    claim_output(p.student("distilled"), "assemble")
    chain = read_chain(p, d.last)
    with reading_weights(p.layer("00"), "rerun the init-student stage"):
        student = HyenaStudentForCausalLM.from_pretrained(p.layer("00")).eval()
    load_distilled_layers(student, chain, p.layer, d.last)
    teacher = ActivationStore.open(p.activations)
    for k in range(len(student.decoder_layers()) + 1):
        check_chunks(teacher.layer("val", k), f"val/layer_{k:02d}", REDUMP, digests=teacher.digests("val", k))
    free = free_running_mse(student, teacher)
    stage = {key: json.loads(p.metrics(f"distill/layer_{key}").read_text()) for key in chain}
    last = max(free)
    card = ModelCard.of(p.layer("00"), student).derive(
        "distilled", params.recipe("tokenize", "dump", "distill"),
        {"distill": sum(m.get("train_tokens", 0) for m in stage.values())},
        {"distill_val_mse_last_layer": stage[last]["val_mse"], "free_running_val_mse_last_layer": free[last]})
    with atomic_dir(p.student("distilled"), "assemble") as tmp:
        student.save_pretrained(tmp)
        copy_tokenizer(p.layer("00"), tmp)
        card.write(tmp, student, str(p.student("distilled")))
    write_metrics(p.metrics("assemble"), {"free_running_val_mse": free})
    plot_layer_mse(stage, free, p.plot("layer_mse"))
    typer.echo(f"distilled student -> {p.student('distilled')}; free-running val MSE at layer {last}: {free[last]:.4g}")


if __name__ == "__main__":
    app()
