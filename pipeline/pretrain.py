"""Stage `pretrain`: the same Hyena student from random initialisation, trained by cross-entropy.

The paper's "pre-trained" baseline. With `budget: auto` it gets the training compute of
distillation (every layer) plus fine-tuning, in FLOPs (see hyena/train/budget.py), so the
comparison with the distilled student is at equal compute.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import typer

from pipeline.common import PARAMS, StageError, load_params, one_line_errors, section
from pipeline.distill import DistillParams, layer_config
from pipeline.lm_stage import LMParams, load_split, run, steps_for_epochs

app = typer.Typer(add_completion=False)


def equal_compute_tokens(model, distill: DistillParams, n_distill_seqs: int, seq_len: int,
                         finetune: LMParams, n_finetune_seqs: int, ft_len: int) -> tuple[int, dict]:
    """Training tokens that give the from-scratch student the distill + finetune FLOPs."""
    from hyena.train.batches import steps_per_run
    from hyena.train.budget import distill_flops, lm_flops, lm_params, tokens_for_flops

    layers = model.decoder_layers()
    layer_params, layer_tokens = [], []
    for key in distill.layers:
        cfg = layer_config(distill, key)
        layer_params.append(sum(p.numel() for p in layers[int(key) - 1].parameters()))
        layer_tokens.append(steps_per_run(n_distill_seqs, cfg.batch_size, cfg.epochs) * cfg.batch_size * seq_len)
    n_lm = lm_params(model)
    ft_steps = steps_for_epochs(n_finetune_seqs, finetune.batch_size, finetune.epochs)
    flops = {"distill": distill_flops(layer_params, layer_tokens),
             "finetune": lm_flops(n_lm, ft_steps * finetune.batch_size * ft_len)}
    return tokens_for_flops(flops["distill"] + flops["finetune"], n_lm), flops


@app.command()
@one_line_errors
def main(
    params: Path = typer.Option(PARAMS, help="params.yaml"),
    tokens: Path = typer.Option(Path("data/tokens"), help="tokenize stage output"),
    store: Path = typer.Option(Path("data/activations.zarr"), help="teacher activation store (its size sets the budget)"),
    init: Path = typer.Option(Path("data/students/layer_00"), help="a student whose architecture to copy"),
    out: Path = typer.Option(Path("data/students/pretrained"), help="from-scratch student (HF format)"),
    reports: Path = typer.Option(Path("reports"), help="metrics and DVCLive curves"),
) -> None:
    from hyena.store import ActivationStore
    from hyena.student import HyenaStudentConfig, HyenaStudentForCausalLM

    all_params = load_params(params)
    p = section(all_params, "pretrain", LMParams)
    config = HyenaStudentConfig.from_pretrained(init)
    config.init = "random"
    torch.manual_seed(p.seed)
    model = HyenaStudentForCausalLM(config)  # every weight random, embeddings included
    train = load_split(tokens, "train", p.max_sequences)
    seq_len = train.shape[1]
    if p.budget == "auto":
        acts = ActivationStore.open(store)
        ft = section(all_params, "finetune", LMParams)
        n_ft = len(load_split(tokens, "train", ft.max_sequences))
        budget, flops = equal_compute_tokens(model, section(all_params, "distill", DistillParams),
                                             acts.n_sequences("train"), acts.seq_len, ft, n_ft, seq_len)
    else:
        try:
            budget, flops = int(p.budget), {}
        except ValueError as err:
            raise StageError(f"pretrain.budget must be 'auto' or a token count (got {p.budget!r})") from err
    steps = max(1, math.ceil(budget / (p.batch_size * seq_len)))
    typer.echo(f"pretrain budget: {budget:,} tokens = {steps} steps of {p.batch_size} x {seq_len} "
               f"({'equal compute: ' + ', '.join(f'{k} {v:.3g} FLOPs' for k, v in flops.items()) if flops else 'explicit'})")
    extra = {"budget_tokens": budget, **{f"flops_{k}": v for k, v in flops.items()}}
    run("pretrain", model, p, steps, tokens, out, reports, extra_metrics=extra, fp_parts=(budget,))


if __name__ == "__main__":
    app()
