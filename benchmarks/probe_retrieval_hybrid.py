"""Which attention layers must a hybrid student keep to retrieve a passkey? A probe (issue 25).

1. Retrieval score of each teacher layer: on passkey prompts (hyena/evaluate/passkey.py), the
   attention mass that the positions predicting the answer put on the needle sentence, for the
   layer's most retrieving head (mean over trials). The needle is ~20 tokens of ~1K, so a head that
   does not look for it scores ~0.02; a copying head scores near 1.
2. A hybrid = the teacher with every attention replaced by the student's mixer except in the kept
   layers. For a student distilled on the teacher's own layer inputs (`distill.input: teacher`,
   the committed recipe) this is the pipeline's distilled hybrid with
   `student.keep_attention: <kept>` up to the mixers' random features (each layer's mixer is fitted
   independently of the others, and the teacher's MLPs, norms and embeddings are the student's); a
   pipeline run of the list draws its own features, and retrieved 4 of 8 keys where this found 7.
3. Passkey accuracy of hybrids keeping the k highest-scoring layers, beside the list that
   `hyena-distill rank-layers` picks by KL (the hybrid measured so far), and (`--prune-from`) of
   the smallest list a greedy search finds, starting from one that retrieves: drop each layer in
   turn, lowest score first, while every key (other seeds than the final test's) is still found.

    python benchmarks/probe_retrieval_hybrid.py [--student data/students/distilled] [--k 3 7] \
        [--lengths 1024 2048 4096 8192] [--trials 2] [--also 1,2,3,4,12,14,24] [--prune-from 7,8,...,24]

Run after `dvc repro` (it reads data/teacher and a student). fp32, one process.
"""

from __future__ import annotations

import argparse
import time

import torch

from hyena.evaluate.passkey import PasskeyConfig, build_trial, needle_span, retrieved, trials
from hyena.evaluate.substitution import substituted
from hyena.model.modeling import HyenaStudentForCausalLM
from hyena.teachers import load_teacher, load_tokenizer


@torch.no_grad()
def retrieval_scores(teacher, tokenizer, length: int, cfg: PasskeyConfig) -> list[float]:
    """Per layer: max over heads of the attention mass on the needle from the answer positions."""
    implementation, teacher.config._attn_implementation = teacher.config._attn_implementation, "eager"  # probabilities
    per_layer = None
    try:
        for depth, key in trials(cfg, length):
            prompt, answer = build_trial(tokenizer, length, depth, key)
            a, b = needle_span(tokenizer, length, depth, key)
            ids = torch.tensor([prompt + answer])
            att = teacher(input_ids=ids, use_cache=False, output_attentions=True).attentions  # L x (1, H, T, T)
            rows = slice(len(prompt) - 1, len(prompt) - 1 + len(answer))
            mass = torch.stack([x[0, :, rows, a:b].sum(-1).mean(-1) for x in att])  # (layers, heads)
            per_layer = mass if per_layer is None else per_layer + mass
    finally:
        teacher.config._attn_implementation = implementation
    return (per_layer / cfg.trials).max(dim=1).values.tolist()


def hybrid(teacher, student, keep: list[int]):
    """The teacher with the student's mixer in every layer but `keep` (1-based), restored after."""
    return substituted(teacher, student, [i for i in student.hyena_layers() if i + 1 not in keep])


def passkey_row(model, tokenizer, cfg: PasskeyConfig) -> dict[int, str]:
    out = {}
    for length in cfg.lengths:
        correct = sum(retrieved(model, *build_trial(tokenizer, length, d, k), "cpu") for d, k in trials(cfg, length))
        out[length] = f"{correct}/{cfg.trials}"
        print(f"    {length}: {out[length]}", flush=True)
    return out


def prune(teacher, student, tokenizer, keep: list[int], scores: list[float], cfg: PasskeyConfig) -> list[int]:
    """Greedy: try dropping each kept layer, lowest retrieval score first; the drop stays when
    the hybrid still retrieves every key of `cfg` (one length). O(len(keep)) passkey runs."""
    keep = sorted(keep)
    for layer in sorted(keep, key=lambda i: scores[i - 1]):
        trial = [i for i in keep if i != layer]
        with hybrid(teacher, student, trial) as model:
            ok = all(retrieved(model, *build_trial(tokenizer, n, d, k), "cpu") for n in cfg.lengths for d, k in trials(cfg, n))
        print(f"    without {layer:2d} (score {scores[layer - 1]:.2f}): {'retrieves, dropped' if ok else 'fails, kept'}", flush=True)
        keep = trial if ok else keep
    return keep


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--teacher", default="data/teacher")
    ap.add_argument("--student", default="data/students/distilled")
    ap.add_argument("--k", type=int, nargs="+", default=[3, 7])
    ap.add_argument("--lengths", type=int, nargs="+", default=[1024, 2048, 4096, 8192])
    ap.add_argument("--trials", type=int, default=2)
    ap.add_argument("--score-length", type=int, default=1024, help="prompt length of the retrieval scores")
    ap.add_argument("--also", nargs="*", default=["1,2,3,4,12,14,24"], help="other kept-layer lists to try")
    ap.add_argument("--prune-from", default=None, help="kept-layer list that retrieves: drop what it can spare (greedy)")
    ap.add_argument("--prune-length", type=int, default=1024)
    ap.add_argument("--prune-trials", type=int, default=4)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.time()
    teacher, tokenizer = load_teacher(args.teacher).eval(), load_tokenizer(args.teacher)
    student = HyenaStudentForCausalLM.from_pretrained(args.student).eval()
    cfg = PasskeyConfig(lengths=args.lengths, trials=args.trials)
    scores = retrieval_scores(teacher, tokenizer, args.score_length, PasskeyConfig(lengths=[args.score_length], trials=4))
    ranked = sorted(range(len(scores)), key=lambda i: -scores[i])
    print("retrieval score per layer (max-head attention mass on the needle, 1K prompts, 4 keys):")
    print("  " + ", ".join(f"{i + 1}: {s:.2f}" for i, s in enumerate(scores)))
    lists = {f"top-{k} retrieval": sorted(i + 1 for i in ranked[:k]) for k in args.k}
    lists.update({f"listed {s}": [int(x) for x in s.split(",")] for s in args.also})
    if args.prune_from:
        start = [int(x) for x in args.prune_from.split(",")]
        print(f"  pruning {start} at {args.prune_length} tokens, {args.prune_trials} keys:", flush=True)
        lists["pruned"] = prune(teacher, student, tokenizer, start, scores,
                                PasskeyConfig(lengths=[args.prune_length], trials=args.prune_trials, seed=1))
    rows = {}
    for name, keep in lists.items():
        print(f"  hybrid keeping {keep} ({name}):", flush=True)
        with hybrid(teacher, student, keep) as model:
            rows[f"{name}: {keep}"] = passkey_row(model, tokenizer, cfg)
    print(f"\nstudent {args.student}, {args.trials} keys per length, {time.time() - t0:.0f} s\n")
    print("| kept attention layers | " + " | ".join(str(n) for n in args.lengths) + " |")
    print("|---|" + "---:|" * len(args.lengths))
    for name, row in rows.items():
        print(f"| {name} | " + " | ".join(row[n] for n in args.lengths) + " |")


if __name__ == "__main__":
    main()
