"""Loading a GGUF teacher: transformers as it is vs one parse per file (`hyena.teachers.gguf_cache`).

transformers parses a .gguf file's metadata once for the config, once for the weights and once
for the tokenizer, and rebuilds gguf's tensor-name map for every module. This times, in one
process, the config + weights + tokenizer load through plain transformers and then through
`load_teacher` + `load_tokenizer` (with the cache emptied first), checks that both give the same
weights and tokens, and prints the ratio.

    python benchmarks/bench_teacher_load.py [--gguf PATH]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from hyena.teachers import load_teacher, load_tokenizer
from hyena.teachers.gguf_cache import _parsed
from hyena.teachers.loading import weights_hash

SMOLLM = "../shared/models/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gguf", default=SMOLLM)
    args = ap.parse_args()
    path = Path(args.gguf)
    text = "The quick brown fox jumps over the lazy dog."

    t = time.perf_counter()
    plain = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
    plain_tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    t_plain = time.perf_counter() - t

    _parsed.cache_clear()
    t = time.perf_counter()
    ours = load_teacher(str(path))
    ours_tok = load_tokenizer(str(path))
    t_ours = time.perf_counter() - t

    assert weights_hash(plain) == weights_hash(ours), "the two loads gave different weights"
    assert plain_tok(text)["input_ids"] == ours_tok(text)["input_ids"], "the two tokenizers differ"
    print(f"{path.name}: transformers {t_plain:.1f} s, one parse per file {t_ours:.1f} s "
          f"({t_plain / t_ours:.1f}x), same weights hash and tokens; torch threads {torch.get_num_threads()}")


if __name__ == "__main__":
    main()
