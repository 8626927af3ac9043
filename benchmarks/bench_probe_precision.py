"""The long-context probes in fp32 and under bf16 autocast (`eval.probe_precision`), side by side.

Scores the eval stage's position-curve windows (params `eval.positions`) for each model in both
precisions, in one process, and prints the seconds per window and, per bucket, the bf16 / fp32
perplexity ratio; with `finetuned` and `recurrent` both given, also how far apart those two are
in each precision (the issue's 1% check of the Laughing Hyena fit).

    python benchmarks/bench_probe_precision.py [--models teacher finetuned recurrent] [--windows 4]

Run after `dvc repro` (it reads data/teacher and data/students).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from hyena.evaluate import positions, streams
from hyena.evaluate.config import EvalConfig
from hyena.evaluate.runner import load_model, probe_autocast
from hyena.teachers import load_tokenizer
from pipeline.params import Params


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["teacher", "finetuned", "recurrent"])
    ap.add_argument("--windows", type=int, default=0, help="windows scored (0: eval.positions.windows)")
    args = ap.parse_args()
    params = Params.read(Path("params.yaml"))
    paths, cfg = params.paths, params.get("eval", EvalConfig).positions
    tok = load_tokenizer(paths.teacher)
    docs = [streams.tokenize_stream(tok, d) for d in positions.read_documents(cfg)]
    windows = positions.cut_windows(docs, cfg.context, args.windows or cfg.windows)
    ppl: dict[tuple[str, str], list[float]] = {}
    labels: list[str] = []
    for name in args.models:
        model = load_model(paths.teacher if name == "teacher" else str(paths.student(name)))
        for precision in ("fp32", "bf16"):
            t = time.perf_counter()
            with probe_autocast(precision, "cpu", model):  # each precision makes its own filters
                nll = positions.position_nll(model, windows, desc=f"{name} {precision}")
            rows = positions.bucket_perplexities(nll, len(windows), cfg.first_bucket)
            labels = [r["label"] for r in rows]
            ppl[name, precision] = [r["ppl"] for r in rows]
            print(f"{name} {precision}: {(time.perf_counter() - t) / len(windows):.1f} s a window of {cfg.context}; "
                  + " ".join(f"{v:.2f}" for v in ppl[name, precision]), flush=True)
        del model
    print(f"\n{len(windows)} windows of {cfg.context}, torch threads {torch.get_num_threads()}; buckets " + " ".join(labels))
    for name in args.models:
        r = np.array(ppl[name, "bf16"]) / np.array(ppl[name, "fp32"])
        print(f"{name}: bf16 / fp32 per bucket " + " ".join(f"{x:.4f}" for x in r))
    if {"finetuned", "recurrent"} <= set(args.models):
        for precision in ("fp32", "bf16"):
            d = np.abs(np.array(ppl["recurrent", precision]) / np.array(ppl["finetuned", precision]) - 1)
            print(f"recurrent vs finetuned, {precision}: max |ratio - 1| {100 * d.max():.3f}% (4K-8K {100 * d[-1]:.3f}%)")


if __name__ == "__main__":
    main()
