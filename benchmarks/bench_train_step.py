"""Training throughput of the distillation and fine-tune steps, this tree against a baseline tree.

The stages' own training functions (`hyena.train.distill.distill_layer`, `hyena.train.lm.train_lm`)
at the cpu-smoke preset's shapes: a SmolLM2-135M-shaped student (random weights: speed does not
depend on them), batch 8, context 512, AdamW, gradient clipping, device and precision as the
stages pick them (`setup()`: fp32 on CPU, bf16 autocast on CUDA).

- distill: one decoder layer (the middle one), only its Hyena mixer trains (distill.train: mixer);
- lm:      the whole student, cross-entropy (the fine-tune and pretrain stages).

`--mixer multihyena` builds the committed recipe's student (MultiHyena from the teacher's heads);
`--precisions fp32 bf16` measures both precisions of the stages' `precision` knob side by side
(bf16: autocast, also on CPUs with avx512_bf16) and adds their ratio.

Every measurement runs in a fresh subprocess with the tree under test first on sys.path; with
`--baseline DIR` (e.g. `git archive <commit> | tar -x -C DIR`) the two trees alternate, so that a
change of load on a shared machine hits both. Tokens/s counts the timed optimiser steps only (one
warm-up step first).

    python benchmarks/bench_train_step.py [--baseline /tmp/base] [--repeats 2] [--threads 2]
    python benchmarks/bench_train_step.py --mixer multihyena --precisions fp32 bf16
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
B, L = 8, 512


def worker(kind: str, steps: int, mixer: str = "hyena", precision: str = "auto") -> dict:
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    from hyena.core.dist import setup
    from hyena.model.build import StudentConfig, build_student
    from hyena.model.operator import HyenaConfig

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                         num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=8192,
                         tie_word_embeddings=True, rms_norm_eps=1e-5)
    teacher = AutoModelForCausalLM.from_config(config).eval()
    if mixer == "hyena":
        cfg = StudentConfig(hyena=HyenaConfig(max_len=8192))
    else:  # the cpu-smoke recipe's student: MultiHyena from the teacher's heads, fast decays
        cfg = StudentConfig(mixer=mixer, init="teacher_attention", hyena=HyenaConfig(max_len=8192, decay_len=64))
    student = build_student(teacher, cfg)
    del teacher
    env = setup(precision=precision)
    rng = np.random.default_rng(0)
    if kind == "distill":
        from hyena.train.distill import DistillConfig, distill_layer

        i = len(student.decoder_layers()) // 2
        layer, mixer = student.decoder_layers()[i], student.mixer(i)
        x = rng.standard_normal((B * steps, L, 576)).astype(np.float32)
        y = rng.standard_normal((B * steps, L, 576)).astype(np.float32)
        val = x[:1], y[:1]

        def run(n_steps):
            cfg = DistillConfig(batch_size=B, epochs=1, log_every=1000)
            if "fn" not in inspect.signature(distill_layer).parameters:  # a baseline tree from before trainable_fn
                return distill_layer(layer, mixer, x[:B * n_steps], y[:B * n_steps], *val, cfg, env)
            from hyena.train.distill import trainable_fn

            fn = trainable_fn(layer, mixer, student.adapter.input_norm(layer), cfg)
            return distill_layer(fn, x[:B * n_steps], y[:B * n_steps], *val, cfg, env)
    else:
        from hyena.train.lm import FinetuneConfig, train_lm

        tokens = rng.integers(0, 49152, (B * steps, L)).astype(np.int32)

        def run(n_steps):
            cfg = FinetuneConfig(batch_size=B, epochs=1.0, log_every=1000, checkpoint_every=10**6)
            return train_lm(student, tokens[:B * n_steps], tokens[:1], cfg, n_steps, env)
    run(1)  # warm-up: allocator, filter generation, optimiser state
    c0 = time.process_time()
    result = run(steps)
    return {"tokens_per_s": result["train_tokens"] / result["seconds"], "seconds": result["seconds"],
            "cpu_s": time.process_time() - c0, "steps": steps, "device": str(env.device)}


def measure(tree: Path, kind: str, steps: int, threads: int, mixer: str = "hyena", precision: str = "auto") -> dict:
    env = dict(os.environ, PYTHONPATH=str(tree), OMP_NUM_THREADS=str(threads), TQDM_DISABLE="1")
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", kind, "--steps", str(steps),
           "--threads", str(threads)]
    if mixer != "hyena" or precision != "auto":  # a baseline tree's worker may predate these options
        cmd += ["--mixer", mixer, "--precision", precision]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tree)
    if proc.returncode != 0:
        raise RuntimeError(f"{kind} worker on {tree} failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--baseline", type=Path, help="a tree to compare against (its hyena/ is imported)")
    ap.add_argument("--kinds", nargs="+", default=["distill", "lm"], choices=["distill", "lm"])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--distill-steps", type=int, default=6)
    ap.add_argument("--lm-steps", type=int, default=2)
    ap.add_argument("--mixer", choices=["hyena", "multihyena"], default="hyena")
    ap.add_argument("--precisions", nargs="+", default=["auto"], choices=["auto", "fp32", "bf16"])
    ap.add_argument("--precision", default="auto", help=argparse.SUPPRESS)
    ap.add_argument("--worker", choices=["distill", "lm"], help=argparse.SUPPRESS)
    ap.add_argument("--steps", type=int, default=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        import torch

        torch.set_num_threads(args.threads)
        print(json.dumps(worker(args.worker, args.steps, args.mixer, args.precision)))
        return
    trees = {"this tree": ROOT}
    if args.baseline:
        trees = {"baseline": args.baseline.resolve(), **trees}
    # columns: every tree at every precision, alternating within a repeat so that load hits all
    def col(name: str, prec: str) -> str:
        return f"{name} {prec}" if len(args.precisions) > 1 else name

    runs = {col(name, prec): (tree, prec) for name, tree in trees.items() for prec in args.precisions}
    load0 = os.getloadavg()[0]
    results: dict = {}
    for r in range(args.repeats):
        for kind in args.kinds:
            steps = args.distill_steps if kind == "distill" else args.lm_steps
            for name, (tree, prec) in runs.items():
                res = measure(tree, kind, steps, args.threads, args.mixer, prec)
                results.setdefault((kind, name), []).append(res)
                print(f"repeat {r} {kind:7s} {name:14s}: {res['tokens_per_s']:8.1f} tokens/s "
                      f"({res['seconds']:.1f} s wall, {res['cpu_s']:.1f} s CPU for {steps} steps)", flush=True)
    print(f"\nSmolLM2-135M-shaped {args.mixer} student, batch {B}, context {L}, {args.threads} threads, load "
          f"average {load0:.1f} -> {os.getloadavg()[0]:.1f}; best of {args.repeats} (tokens/s, wall)")
    ratios = []  # (header, numerator column, denominator column)
    if args.baseline:
        ratios += [(col("this / baseline", p), col("this tree", p), col("baseline", p)) for p in args.precisions]
    if set(args.precisions) >= {"fp32", "bf16"}:
        ratios += [(f"bf16 / fp32 ({n})", f"{n} bf16", f"{n} fp32") for n in trees]
    print("| step | " + " | ".join(runs) + " | " + "".join(f"{h} | " for h, _, _ in ratios))
    print("|---|" + "---:|" * (len(runs) + len(ratios)))
    for kind in args.kinds:
        best = {name: max(x["tokens_per_s"] for x in results[(kind, name)]) for name in runs}
        cells = [f"{best[n]:.1f}" for n in runs] + [f"{best[a] / best[b]:.2f}x" for _, a, b in ratios]
        print(f"| {kind} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
