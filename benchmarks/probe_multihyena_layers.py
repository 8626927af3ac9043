"""One-layer attention transfer probe: MultiHyena (and the Hyena mixer) vs a teacher attention.

For each chosen SmolLM2 layer (1-based, as params.yaml's distill.layers keys), with teacher-forced
inputs (the teacher's own input to that layer) on --train x 512 OpenWebText tokens, the mixer is
fitted to the teacher attention's output (`distill.target: mixer_output`) through the library's
own `distill_layer`: least-squares readout, then --epochs of gradient steps on everything but
W_o, then the readout again. Printed: validation attention-output nMSE after the first readout
(`before`) and at the end (`after`), on --val held-out rows, and the seconds it took.

    python benchmarks/probe_multihyena_layers.py --layers 2 10 20 --epochs 0 4 --mixers multihyena hyena

The teacher's layer inputs are cached under --cache (one teacher pass, ~3 min on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
GGUF = SHARED / "models/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf"
CORPUS = SHARED / "data/openwebtext/owt_val_1000docs.jsonl"
CONTEXT = 512


def token_rows(tokenizer, n_rows: int) -> np.ndarray:
    """The first n_rows x CONTEXT tokens of the corpus, documents joined by EOS."""
    ids: list[int] = []
    with open(CORPUS) as f:
        for line in f:
            ids += tokenizer(json.loads(line)["text"])["input_ids"] + [tokenizer.eos_token_id]
            if len(ids) >= n_rows * CONTEXT:
                break
    return np.asarray(ids[: n_rows * CONTEXT], dtype=np.int64).reshape(n_rows, CONTEXT)


def layer_inputs(teacher, tokenizer, layers: list[int], n_rows: int, cache: Path) -> dict[int, np.ndarray]:
    from hyena.teachers import capture_layer_outputs

    files = {i: cache / f"layer_{i:02d}_in_{n_rows}.npy" for i in layers}
    if all(f.exists() for f in files.values()):
        return {i: np.load(f, mmap_mode="r") for i, f in files.items()}
    rows = token_rows(tokenizer, n_rows)
    got: dict[int, list[np.ndarray]] = {i: [] for i in layers}
    for b in range(0, n_rows, 4):
        outs = capture_layer_outputs(teacher, torch.from_numpy(rows[b:b + 4]))
        for i in layers:
            got[i].append(outs[i - 1].float().numpy())  # entry i-1: the input of layer i (1-based)
    cache.mkdir(parents=True, exist_ok=True)
    for i in layers:
        np.save(files[i], np.concatenate(got[i]))
    return {i: np.load(f, mmap_mode="r") for i, f in files.items()}


def probe(teacher, i: int, x: np.ndarray, mixer: str, epochs: int, args) -> dict:
    from hyena.core.dist import DistEnv
    from hyena.model.multihyena import MultiHyenaOperator, init_from_attention
    from hyena.model.operator import HyenaConfig, HyenaOperator
    from hyena.teachers import attention_output, get_adapter
    from hyena.train.batches import load_all
    from hyena.train.distill import (
        RAM_BYTES,
        ComputedTargets,
        DistillConfig,
        MixerOnly,
        distill_layer,
        fit_readout,
    )

    torch.manual_seed(0)
    cfg = HyenaConfig(max_len=8192, decay_len=args.decay_len)
    layer = get_adapter(teacher).layers(teacher)[i - 1]
    if mixer == "multihyena":
        op = MultiHyenaOperator(576, 9, 3, cfg)
        init_from_attention(op, get_adapter(teacher).attention(layer), teacher.config)
    else:
        op = HyenaOperator(576, cfg)
    fn = MixerOnly(get_adapter(teacher).input_norm(layer), op)
    fn.norm.requires_grad_(False)
    dcfg = DistillConfig(epochs=epochs, lr=args.lr, batch_size=8, input="teacher", target="mixer_output",
                         readout="least_squares", log_every=1000, skip_first=args.skip_first)
    env = DistEnv()
    train_in, val_in = x[: args.train], x[args.train: args.train + args.val]
    target = lambda t: attention_output(teacher, i - 1, t)  # noqa: E731
    train_t = load_all(ComputedTargets(train_in, target, env.device), RAM_BYTES // 2)
    val_t = ComputedTargets(val_in, target, env.device)
    op.out_proj.requires_grad_(False)
    t0 = time.perf_counter()
    r = distill_layer(fn, train_in, train_t, val_in, val_t, dcfg, env,
                      readout=lambda: fit_readout(op, fn.norm, train_in, train_t, dcfg, env))
    return {"layer": i, "mixer": mixer, "epochs": epochs, "lr": args.lr, "skip_first": args.skip_first,
            "decay_len": args.decay_len, "nmse_readout": round(r["val_nmse_before"], 4),
            "nmse_final": round(r["val_nmse"], 4), "seconds": round(time.perf_counter() - t0, 1)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--layers", type=int, nargs="+", default=[2, 10, 20])
    p.add_argument("--mixers", nargs="+", default=["multihyena", "hyena"])
    p.add_argument("--epochs", type=int, nargs="+", default=[0, 4])
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--skip-first", type=int, default=0, help="distill.skip_first: positions left out of the loss and readout")
    p.add_argument("--decay-len", type=int, default=256, help="student.hyena.decay_len (cpu-smoke: 256)")
    p.add_argument("--train", type=int, default=32)
    p.add_argument("--val", type=int, default=8)
    p.add_argument("--cache", type=Path, default=Path("/tmp/multihyena_probe"))
    args = p.parse_args()
    sys.path.insert(0, str(ROOT))
    torch.set_num_threads(2)
    from hyena.teachers import load_teacher, load_tokenizer

    teacher, tokenizer = load_teacher(str(GGUF)), load_tokenizer(str(GGUF))
    xs = layer_inputs(teacher, tokenizer, args.layers, args.train + args.val, args.cache)
    for i in args.layers:
        for mixer in args.mixers:
            for epochs in args.epochs:
                print(json.dumps(probe(teacher, i, np.asarray(xs[i]), mixer, epochs, args)), flush=True)


if __name__ == "__main__":
    main()
