"""Hyena operator vs causal attention on CPU: time and peak memory, side by side in one run.

Both mixers have SmolLM2-135M's width and heads: d = 576, 9 query heads of 64, 3 KV heads.
  * attention: transformers' own LlamaAttention (q/k/v/o projections, rotary, SDPA with
    is_causal, grouped-query), the rotary cos/sin table built once outside the timed call (the
    model builds it once for all layers).
  * Hyena: hyena.model.operator.HyenaOperator(d, HyenaConfig(order=2, max_len=max L)), default filter.
  * hyena_baseline (with --baseline DIR): the same operator from another tree (e.g. the commit
    before a change), so that a change is measured against attention in the same run.

Cells (fp32):
  * training shapes: batch --train-batch (8) at L = --train-length (1024), fwd and fwd+bwd;
  * long context: batch 1 at --lengths, fwd (and fwd+bwd up to --max-bwd-length).
  * fwd      eval, no grad; Hyena "cached" (filter and its FFT reused, as at inference) and
             "uncached" (filter regenerated every call, at batch 1 only).
  * fwd+bwd  train mode, loss = output.sum(), backward to the input and every parameter.

Every cell runs in a fresh subprocess, so that
  * peak memory = ru_maxrss after the first call minus ru_maxrss after building the module and
    its input: the extra resident memory (activations, workspaces, gradients) the call needed.
  * a config that runs too long is killed at --timeout and reported as skipped, not crashed.
Wall and process CPU time are both recorded (CPU time is less disturbed by other processes on a
shared machine). Time = the fastest of the timed calls after one warm-up call; when the warm-up
alone exceeds --single-above seconds it is the only measurement (n=1). Ratios are attention time
/ Hyena time, so > 1 means Hyena wins.

    python benchmarks/bench_operator.py [--baseline DIR]   # writes BENCHMARKS.md
    python benchmarks/bench_operator.py --quick            # small shapes, prints only
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SECTION = "## Hyena operator vs attention"
FULL_LENGTHS = [1024, 4096, 16384, 65536]
QUICK_LENGTHS = [256, 1024]
D_MODEL, HEADS, KV_HEADS = 576, 9, 3


# ----------------------------------------------------------------------------------------------
# worker: one (mixer, mode, L, batch) in this process
# ----------------------------------------------------------------------------------------------


def build_attention(max_len: int):
    """SmolLM2's attention block and a call that feeds it (rotary table precomputed)."""
    import torch
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaAttention, LlamaRotaryEmbedding

    cfg = LlamaConfig(hidden_size=D_MODEL, num_attention_heads=HEADS, num_key_value_heads=KV_HEADS,
                      max_position_embeddings=max_len, intermediate_size=1536, num_hidden_layers=1)
    cfg._attn_implementation = "sdpa"
    attn, rotary = LlamaAttention(cfg, layer_idx=0), LlamaRotaryEmbedding(cfg)

    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.attn = attn
            self.rope: tuple | None = None

        def forward(self, x):  # (B, L, d)
            if self.rope is None or self.rope[0].shape[1] != x.shape[1]:
                with torch.no_grad():
                    pos = torch.arange(x.shape[1])[None]
                    self.rope = rotary(x, position_ids=pos)
            return self.attn(x, position_embeddings=self.rope, attention_mask=None)[0]

    return Block()


def maxrss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def worker(mixer: str, mode: str, L: int, batch: int, max_len: int, repeats: int, single_above: float) -> dict:
    import torch

    from hyena.model.operator import HyenaConfig, HyenaOperator

    torch.manual_seed(0)
    if mixer == "attention":
        model = build_attention(max_len)
    else:
        model = HyenaOperator(D_MODEL, HyenaConfig(order=2, max_len=max_len))
    u = torch.randn(batch, L, D_MODEL)  # (B, L, d)

    if mode == "fwd":
        model.eval()
        model(u[:, :8]).sum()  # builds the rotary table / nothing for Hyena (its filter is per L)

        def call():
            if mixer.endswith("uncached"):
                model.filter_fn.clear_cache()
            with torch.no_grad():
                model(u)
    else:
        model.train()
        u.requires_grad_(True)

        def call():
            model(u).sum().backward()

    def timed() -> tuple[float, float]:  # (wall s, CPU s of all this process's threads)
        t0, c0 = time.perf_counter(), time.process_time()
        call()
        return time.perf_counter() - t0, time.process_time() - c0

    base = maxrss_mib()
    runs = [timed()]  # the warm-up
    peak = maxrss_mib() - base
    if runs[0][0] <= single_above:
        runs = [timed() for _ in range(repeats)]
    return {"time_s": min(r[0] for r in runs), "cpu_s": min(r[1] for r in runs), "n": len(runs),
            "peak_mib": peak, "base_mib": base}


# ----------------------------------------------------------------------------------------------
# driver
# ----------------------------------------------------------------------------------------------


def cells(args) -> list[tuple[str, str, int, int]]:
    """(mixer, mode, L, batch) to run, training shapes first."""
    hyenas = ["hyena"] + (["hyena_baseline"] if args.baseline else [])
    out = [(m, mode, args.train_length, args.train_batch)
           for mode in ("fwd", "fwdbwd") for m in ["attention", *hyenas]]
    for L in args.lengths:
        out += [(m, "fwd", L, 1) for m in ["attention", *hyenas, "hyena_uncached"]]
        if L <= args.max_bwd_length:
            out += [(m, "fwdbwd", L, 1) for m in ["attention", *hyenas]]
    return out


def run_job(mixer: str, mode: str, L: int, batch: int, args) -> dict:
    tree = args.baseline if mixer == "hyena_baseline" else ROOT
    name = "hyena" if mixer == "hyena_baseline" else mixer
    max_len = max([*args.lengths, args.train_length])
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", name, mode, str(L), str(batch),
           "--max-len", str(max_len), "--repeats", str(args.repeats), "--single-above", str(args.single_above),
           "--threads", str(args.threads)]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), PYTHONPATH=str(tree))
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout, env=env, cwd=tree)
    except subprocess.TimeoutExpired:
        return {"skipped": f"timeout > {args.timeout:.0f} s"}
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1]
        return {"skipped": f"failed: {last[:80]}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def fmt_time(r: dict | None) -> str:
    if r is None:
        return "-"
    if "skipped" in r:
        return f"skipped ({r['skipped']})"
    return f"{r['time_s']:.3f}" + ("" if r["n"] > 1 else " (n=1)")


def fmt_ratio(a: dict | None, h: dict | None) -> str:
    if not a or not h or "skipped" in a or "skipped" in h:
        return "-"
    return f"{a['time_s'] / h['time_s']:.2f}x ({a['cpu_s'] / h['cpu_s']:.2f}x)"


def fmt_mem(r: dict | None) -> str:
    if not r or "skipped" in r:
        return "-"
    return f"{r['peak_mib']:.0f}"


def render(results: dict, args, started: str, load: tuple, seconds: float) -> str:
    import torch

    base = bool(args.baseline)
    head = "| B | L | mode | attention (s) | Hyena (s) | attention / Hyena |"
    head += " Hyena before (s) | attention / Hyena before |" if base else ""
    head += " Hyena uncached (s) | attention / uncached | peak MiB attn / Hyena |"
    lines = [head, "|" + "|".join(["---:"] * (head.count("|") - 1)) + "|"]
    keys = sorted({(b, L, mode) for (_, mode, L, b) in results}, key=lambda k: (-k[0], k[1], k[2]))
    for b, L, mode in keys:
        a, h = results.get(("attention", mode, L, b)), results.get(("hyena", mode, L, b))
        hb, hu = results.get(("hyena_baseline", mode, L, b)), results.get(("hyena_uncached", mode, L, b))
        row = f"| {b} | {L} | {'fwd' if mode == 'fwd' else 'fwd+bwd'} | {fmt_time(a)} | {fmt_time(h)} | {fmt_ratio(a, h)} |"
        if base:
            row += f" {fmt_time(hb)} | {fmt_ratio(a, hb)} |"
        row += f" {fmt_time(hu)} | {fmt_ratio(a, hu)} | {fmt_mem(a)} / {fmt_mem(h)} |"
        lines.append(row)
    machine = (f"{args.threads}-thread CPU ({platform.processor() or platform.machine()}, "
               f"{os.cpu_count()} cores visible), no GPU, fp32, d={D_MODEL}, {HEADS} heads / {KV_HEADS} KV heads, "
               f"torch {torch.__version__}")
    cmd = "python benchmarks/bench_operator.py" + (" --quick" if args.quick else "") + \
        (" --baseline DIR" if base else "")
    text = [
        SECTION, "",
        f"Command: `{cmd}` ({started}, {seconds / 60:.1f} min). Machine: {machine}. "
        f"Load average at start / end: {load[0]:.1f} / {load[1]:.1f} (the machine is shared; "
        "times are the fastest of several calls, see the script's docstring).", "",
        "Attention = transformers' LlamaAttention (SmolLM2's shapes: q/k/v/o, rotary, SDPA causal, "
        "grouped-query); Hyena = order 2, one implicit long filter, FFT convolution. Ratios are "
        "attention time / Hyena time (> 1: Hyena faster): wall clock, and in parentheses process CPU "
        "time, which other processes on a shared machine disturb less. Peak MiB: extra resident "
        "memory of the call (fresh process per cell).", "",
    ]
    return "\n".join(text + lines) + "\n"


def write_section(path: Path, text: str) -> None:
    """Replace (or append) our `## ` section, leaving every other section as it is."""
    old = path.read_text() if path.exists() else "# Benchmarks\n"
    start = old.find(SECTION + "\n")
    if start < 0:
        new = old.rstrip("\n") + "\n\n" + text
    else:
        end = old.find("\n## ", start + len(SECTION))
        rest = old[end + 1:] if end >= 0 else ""
        new = old[:start] + text + ("\n" + rest if rest else "")
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(new)
    tmp.replace(path)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small shapes only; prints, writes nothing")
    p.add_argument("--lengths", type=int, nargs="+", help="batch-1 sequence lengths (default 1K 4K 16K 64K)")
    p.add_argument("--train-length", type=int, default=1024, help="L of the training-shape cells")
    p.add_argument("--train-batch", type=int, default=8, help="batch of the training-shape cells")
    p.add_argument("--max-bwd-length", type=int, default=16384, help="longest batch-1 fwd+bwd cell")
    p.add_argument("--baseline", type=Path, help="another tree whose HyenaOperator also runs (e.g. before a change)")
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads (default 2)")
    p.add_argument("--repeats", type=int, default=5, help="timed calls after the warm-up")
    p.add_argument("--single-above", type=float, default=10.0,
                   help="if the warm-up takes longer (s), it is the only measurement")
    p.add_argument("--timeout", type=float, default=900.0, help="per-cell limit (s); then 'skipped'")
    p.add_argument("--out", type=Path, default=ROOT / "BENCHMARKS.md", help="markdown file to update")
    p.add_argument("--no-write", action="store_true", help="print the table only")
    p.add_argument("--worker", nargs=4, metavar=("MIXER", "MODE", "L", "B"), help=argparse.SUPPRESS)
    p.add_argument("--max-len", type=int, default=65536, help=argparse.SUPPRESS)
    args = p.parse_args()

    if args.worker:
        import torch

        torch.set_num_threads(args.threads)
        mixer, mode, L, batch = args.worker
        print(json.dumps(worker(mixer, mode, int(L), int(batch), args.max_len, args.repeats, args.single_above)))
        return

    args.lengths = args.lengths or (QUICK_LENGTHS if args.quick else FULL_LENGTHS)
    if args.quick:
        args.train_length, args.train_batch = 256, 2
    if args.baseline:
        args.baseline = args.baseline.resolve()
    started = time.strftime("%Y-%m-%d %H:%M")
    load0, t0 = os.getloadavg()[0], time.perf_counter()
    results: dict = {}
    from tqdm import tqdm

    bar = tqdm(cells(args), desc="cells")
    for mixer, mode, L, batch in bar:
        bar.set_postfix_str(f"B={batch} L={L} {mixer} {mode}")
        r = run_job(mixer, mode, L, batch, args)
        results[(mixer, mode, L, batch)] = r
        tqdm.write(f"B={batch} L={L:>6} {mixer:>15} {mode:>6}: {json.dumps(r)}")
    text = render(results, args, started, (load0, os.getloadavg()[0]), time.perf_counter() - t0)
    print("\n" + text)
    if not (args.quick or args.no_write):
        write_section(args.out, text)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
