"""Stage `assemble`: put the distilled layers into one student (the MSE-distilled model, HF format).

Also measures the free-running error: starting from the teacher's embedding output, run the
assembled student layer by layer on the validation sequences and compare every layer's output
with the teacher's. With `distill.input: teacher` this shows how errors compound once layers
feed each other; with `student` it matches the per-stage validation MSE.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer

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
    import numpy as np
    import torch
    from safetensors.torch import load_file

    from hyena.core.io import atomic_dir, claim_output, file_sha256, reading_weights
    from hyena.data.store import REDUMP, ActivationStore, check_chunks
    from hyena.evaluate.plots import plot_layer_mse
    from hyena.model.cards import ModelCard
    from hyena.model.modeling import HyenaStudentForCausalLM
    from hyena.teachers import copy_tokenizer
    from hyena.train.batches import VAL_BATCH
    from hyena.train.distill import DistillConfig

    params = Params.read(params_file)
    d, p = params.get("distill", DistillConfig), params.paths
    if d.last != max(d.layers):
        raise StageError(f"params distill.last is {d.last!r} but the last layer in distill.layers is {max(d.layers)!r}")
    claim_output(p.student("distilled"), "assemble")
    chain = read_chain(p, d.last)
    with reading_weights(p.layer("00"), "rerun the init-student stage"):
        student = HyenaStudentForCausalLM.from_pretrained(p.layer("00")).eval()
    layers = student.decoder_layers()
    for key, sha in sorted(chain.items()):
        weights = p.layer(key) / "layer.safetensors"
        if not weights.is_file():
            raise StageError(f"{weights} not found: rerun distill@{key} (dvc repro distill@{key})")
        if file_sha256(weights) != sha:
            raise StageError(f"{weights} changed since layer {d.last} was distilled: run dvc repro")
        layers[int(key) - 1].load_state_dict(load_file(str(weights)))
    teacher = ActivationStore.open(p.activations)
    for k in range(len(layers) + 1):
        check_chunks(teacher.layer("val", k), f"val/layer_{k:02d}", REDUMP, digests=teacher.digests("val", k))

    n_val = teacher.n_sequences("val")
    sq = np.zeros(len(layers))
    count = 0
    with torch.no_grad():
        for start in range(0, n_val, VAL_BATCH):
            rows = slice(start, min(start + VAL_BATCH, n_val))
            h = torch.from_numpy(np.asarray(teacher.layer("val", 0)[rows])).float()  # (b, L, d)
            for i in range(len(layers)):
                h = student.run_layer(i, h)
                target = torch.from_numpy(np.asarray(teacher.layer("val", i + 1)[rows])).float()
                sq[i] += (h - target).pow(2).sum().item()
            count += h.numel()
    free = {f"{i + 1:02d}": sq[i] / count for i in range(len(layers))}
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
