"""Dump throughput vs the teacher's forward-only throughput, on the same sequences, in one run.

    python benchmarks/bench_dump.py [--context 256] [--sequences 16] [--batch 4] [--repeats 2]

Teacher: the real SmolLM2-135M (GGUF, fp32) from ../shared. For each repeat it times
  forward:  model(input_ids) over the sequences in the dump's batches (no hooks, nothing kept)
  dump:     hyena.data.dump.dump_activations into a fresh store (hooks, fp16 cast, Zarr writes on the
            writer thread, progress markers, final summary)
and prints tokens/s of each and their ratio dump/forward (target >= 0.8: I/O hidden behind compute).
Forward and dump alternate so that background load affects both alike; the best repeat of each is
reported. Needs HF_HUB_OFFLINE=1 (set here).
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from hyena.data.corpus import TokenizeConfig  # noqa: E402
from hyena.data.dump import DumpConfig, dump_activations
from hyena.data.store import disk_bytes  # noqa: E402
from hyena.data.tokens import build_token_dataset, load_tokens
from hyena.teachers import load_teacher, load_tokenizer  # noqa: E402

SHARED = Path(os.environ.get("HYENA_SHARED", Path(__file__).resolve().parents[2] / "shared"))
GGUF = SHARED / "models/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf"
OWT = SHARED / "data/openwebtext/owt_val_1000docs.jsonl"


@torch.no_grad()
def forward_only(model, rows: np.ndarray, batch: int) -> float:
    t0 = time.perf_counter()
    for b in range(0, len(rows), batch):
        model(input_ids=torch.from_numpy(np.asarray(rows[b : b + batch], dtype=np.int64)), use_cache=False)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--context", type=int, default=256)
    ap.add_argument("--sequences", type=int, default=16)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--chunk", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--codec", default="none")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench_dump_"))
    try:
        tok = load_tokenizer(str(GGUF))
        p_tok = TokenizeConfig(corpus=str(OWT), max_documents=200, context=args.context, val_fraction=0.01)
        build_token_dataset(p_tok, tok, str(GGUF), work / "tokens")
        model = load_teacher(str(GGUF))
        rows = load_tokens(work / "tokens", "train")[: args.sequences]
        p = DumpConfig(train_sequences=args.sequences, val_sequences=0, batch_size=args.batch,
                       chunk_sequences=args.chunk, codec=args.codec)
        forward_only(model, rows[: args.batch], args.batch)  # warm-up
        fwd, dump = [], []
        for r in range(args.repeats):
            fwd.append(forward_only(model, rows, args.batch))
            out = work / f"acts{r}.zarr"
            t0 = time.perf_counter()
            dump_activations(model, work / "tokens", out, p, str(GGUF), progress_bar=False)
            dump.append(time.perf_counter() - t0)
            written = disk_bytes(out)
            shutil.rmtree(out)
        tokens = args.sequences * args.context
        f, d = min(fwd), min(dump)
        print(f"SmolLM2-135M fp32, {args.sequences} x {args.context} tokens, batch {args.batch}, chunk {args.chunk}, "
              f"codec {args.codec}, torch threads {torch.get_num_threads()}, load avg {os.getloadavg()[0]:.1f}")
        print(f"forward-only : {tokens / f:8.1f} tok/s  ({f:.2f} s; repeats {', '.join(f'{x:.2f}' for x in fwd)})")
        print(f"dump         : {tokens / d:8.1f} tok/s  ({d:.2f} s; repeats {', '.join(f'{x:.2f}' for x in dump)}), "
              f"{written / 1e6:.0f} MB written = {written / 1e6 / d:.0f} MB/s")
        print(f"ratio dump / forward throughput: {f / d:.3f}  (target >= 0.8)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
