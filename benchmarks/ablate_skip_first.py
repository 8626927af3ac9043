"""Does the attention-sink outlier steer layer distillation? Plain MSE vs `skip_first=1`, side by side.

From a middle layer on, Llama-family teachers (SmolLM2) write a massive activation into the first
position of every sequence. This trains chosen layers of the pipeline's initial student twice on
the cached teacher activations (teacher-forced inputs, the run's distill settings otherwise), once
with plain MSE and once leaving position 0 out of the loss, and prints the validation MSE over
positions >= 1 (what every later token sees) and over all positions.

    python benchmarks/ablate_skip_first.py --layers 6 12 20 28
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import numpy as np

from hyena.core.dist import DistEnv
from hyena.data.store import ActivationStore
from hyena.model.modeling import HyenaStudentForCausalLM
from hyena.train.distill import DistillConfig, distill_layer, trainable_fn
from pipeline.params import load_params, section


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, nargs="+", default=[6, 12, 20, 28])
    ap.add_argument("--params", type=Path, default=Path("params.yaml"))
    ap.add_argument("--store", type=Path, default=Path("data/activations.zarr"))
    ap.add_argument("--student", type=Path, default=Path("data/students/layer_00"))
    args = ap.parse_args()

    p = section(load_params(args.params), "distill", DistillConfig)
    acts = ActivationStore.open(args.store)
    rows = []
    for layer in args.layers:
        inputs = {s: np.asarray(acts.layer(s, layer - 1)[:]) for s in ("train", "val")}
        targets = {s: np.asarray(acts.layer(s, layer)[:]) for s in ("train", "val")}
        first = np.abs(targets["val"][:, 0].astype(np.float32)).max()
        rest = np.abs(targets["val"][:, 1:].astype(np.float32)).max()
        for skip in (0, 1):
            student = HyenaStudentForCausalLM.from_pretrained(args.student).requires_grad_(False)
            cfg = dataclasses.replace(p.for_layer(f"{layer:02d}"), skip_first=skip, log_every=10**9)
            block = student.decoder_layers()[layer - 1]
            res = distill_layer(trainable_fn(block, student.mixer(layer - 1), None, cfg), inputs["train"],
                                targets["train"], inputs["val"], targets["val"], cfg, DistEnv())
            rows.append((layer, skip, first, rest, res))
    print("\n| layer | max abs target, position 0 / others | skip_first | val MSE positions >= 1 (before -> after) | val MSE all positions (before -> after) |")
    print("|---:|---|---:|---|---|")
    for layer, skip, first, rest, r in rows:
        print(f"| {layer} | {first:.0f} / {rest:.0f} | {skip} | {r['val_mse_after_first_before']:.4g} -> "
              f"**{r['val_mse_after_first']:.4g}** ({r['val_mse_after_first_before'] / r['val_mse_after_first']:.2f}x) | "
              f"{r['val_mse_before']:.4g} -> {r['val_mse']:.4g} |")


if __name__ == "__main__":
    main()
