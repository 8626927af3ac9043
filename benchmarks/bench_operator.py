"""Hyena operator vs causal attention on CPU: time and peak memory, side by side in one run.

Both mixers include their projections and have Pythia-70M's width: d = 512.
  * attention: qkv Linear(d, 3d) -> torch scaled_dot_product_attention(is_causal=True), 8 heads
    of 64 -> out Linear(d, d).
  * Hyena: hyena.operator.HyenaOperator(d, HyenaConfig(order=2, max_len=max L)), default filter.

Modes (batch 1, fp32):
  * fwd      eval, no grad. Hyena twice: "cached" (filter and its FFT reused, as at inference)
             and "uncached" (filter regenerated every call).
  * fwd+bwd  train mode, loss = output.sum(), backward to the input and every parameter.

Every (mixer, mode, L) runs in a fresh subprocess, so that
  * peak memory = ru_maxrss after the first call minus ru_maxrss after building the module and
    its input: the extra resident memory (activations, workspaces, gradients) the call needed.
    Large tensors come from mmap and go back to the OS when freed, so this tracks the live peak.
  * a config that runs too long is killed at --timeout and reported as skipped, not crashed.
Wall and process CPU time are both recorded (CPU time is less disturbed by other processes on a
shared machine). Time = the fastest of the timed calls after one warm-up call (the fastest is the least disturbed
by other processes on a shared machine); when the warm-up alone exceeds --single-above seconds it
is the only measurement (n=1). Ratios are attention time / Hyena time, so > 1 means Hyena wins.

    python benchmarks/bench_operator.py            # L = 1K .. 64K, writes BENCHMARKS.md
    python benchmarks/bench_operator.py --quick    # L = 256 .. 2K, prints only
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
FULL_LENGTHS = [1024, 2048, 4096, 8192, 16384, 32768, 65536]
QUICK_LENGTHS = [256, 512, 1024, 2048]
D_MODEL, HEADS = 512, 8
JOBS = [("attention", "fwd"), ("hyena", "fwd"), ("hyena_uncached", "fwd"),
        ("attention", "fwdbwd"), ("hyena", "fwdbwd")]


# ----------------------------------------------------------------------------------------------
# worker: one (mixer, mode, L) in this process
# ----------------------------------------------------------------------------------------------


def build_attention(d: int, heads: int):
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    class CausalSelfAttention(nn.Module):
        def __init__(self):
            super().__init__()
            self.qkv, self.out = nn.Linear(d, 3 * d), nn.Linear(d, d)

        def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, L, d)
            B, L, _ = x.shape
            q, k, v = self.qkv(x).view(B, L, 3, heads, d // heads).permute(2, 0, 3, 1, 4)  # (B, H, L, dh)
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, H, L, dh)
            return self.out(y.transpose(1, 2).reshape(B, L, d))

    return CausalSelfAttention()


def maxrss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def worker(mixer: str, mode: str, L: int, max_len: int, repeats: int, single_above: float) -> dict:
    import torch

    from hyena.operator import HyenaConfig, HyenaOperator

    torch.manual_seed(0)
    if mixer == "attention":
        model = build_attention(D_MODEL, HEADS)
    else:
        model = HyenaOperator(D_MODEL, HyenaConfig(order=2, max_len=max_len))
    u = torch.randn(1, L, D_MODEL)  # (B, L, d)

    if mode == "fwd":
        model.eval()

        def call():
            if mixer == "hyena_uncached":
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


def run_job(mixer: str, mode: str, L: int, args) -> dict:
    cmd = [sys.executable, __file__, "--worker", mixer, mode, str(L), "--max-len", str(max(args.lengths)),
           "--repeats", str(args.repeats), "--single-above", str(args.single_above),
           "--threads", str(args.threads)]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), PYTHONPATH=str(ROOT))
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout, env=env)
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
    return f"{a['time_s'] / h['time_s']:.1f}x ({a['cpu_s'] / h['cpu_s']:.1f}x)"


def fmt_mem(r: dict | None) -> str:
    if not r or "skipped" in r:
        return "-"
    return f"{r['peak_mib']:.0f}"


def render(results: dict, args, started: str, load: tuple, seconds: float) -> str:
    lines = [
        "| L | fwd attn (s) | fwd Hyena cached (s) | fwd Hyena uncached (s) | fwd attn/Hyena cached | fwd attn/Hyena uncached | fwd+bwd attn (s) | fwd+bwd Hyena (s) | fwd+bwd attn/Hyena |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for L in args.lengths:
        r = results[L]
        a, h, hu = r.get(("attention", "fwd")), r.get(("hyena", "fwd")), r.get(("hyena_uncached", "fwd"))
        ab, hb = r.get(("attention", "fwdbwd")), r.get(("hyena", "fwdbwd"))
        lines.append(f"| {L} | {fmt_time(a)} | {fmt_time(h)} | {fmt_time(hu)} | {fmt_ratio(a, h)} | "
                     f"{fmt_ratio(a, hu)} | {fmt_time(ab)} | {fmt_time(hb)} | {fmt_ratio(ab, hb)} |")
    lines += ["", "Peak extra resident memory per call (MiB; ru_maxrss after the first call minus "
              "before it, fresh process per cell):", "",
              "| L | fwd attn | fwd Hyena cached | fwd Hyena uncached | fwd+bwd attn | fwd+bwd Hyena |",
              "|---:|---:|---:|---:|---:|---:|"]
    for L in args.lengths:
        r = results[L]
        cells = [fmt_mem(r.get(job)) for job in JOBS]
        lines.append(f"| {L} | " + " | ".join(cells) + " |")
    import torch

    machine = (f"{args.threads}-thread CPU ({platform.processor() or platform.machine()}, "
               f"{os.cpu_count()} cores visible), no GPU, fp32, batch 1, d={D_MODEL}, {HEADS} heads, "
               f"torch {torch.__version__}")
    head = [
        SECTION, "",
        f"Command: `python benchmarks/bench_operator.py{' --quick' if args.quick else ''}` "
        f"({started}, {seconds / 60:.1f} min). Machine: {machine}. "
        f"Load average at start / end: {load[0]:.1f} / {load[1]:.1f} (the machine is shared; "
        "times are the fastest of several calls, see the script's docstring).", "",
        "Both mixers include their projections: attention = qkv Linear + "
        "`scaled_dot_product_attention(is_causal=True)` + out Linear; Hyena = order 2, one implicit "
        "long filter, FFT convolution. Ratios are attention time / Hyena time (> 1: Hyena faster): "
        "wall clock, and in parentheses process CPU time, which other processes on a shared machine "
        "disturb less.",
        "",
    ]
    return "\n".join(head + lines) + "\n"


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
    p.add_argument("--quick", action="store_true", help="small L only (256..2K); prints, writes nothing")
    p.add_argument("--lengths", type=int, nargs="+", help="override the sequence lengths")
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads (default 2)")
    p.add_argument("--repeats", type=int, default=5, help="timed calls after the warm-up")
    p.add_argument("--single-above", type=float, default=10.0,
                   help="if the warm-up takes longer (s), it is the only measurement")
    p.add_argument("--timeout", type=float, default=900.0, help="per-config limit (s); then 'skipped'")
    p.add_argument("--out", type=Path, default=ROOT / "BENCHMARKS.md", help="markdown file to update")
    p.add_argument("--no-write", action="store_true", help="print the table only")
    p.add_argument("--worker", nargs=3, metavar=("MIXER", "MODE", "L"), help=argparse.SUPPRESS)
    p.add_argument("--max-len", type=int, default=65536, help=argparse.SUPPRESS)
    args = p.parse_args()

    if args.worker:
        import torch

        torch.set_num_threads(args.threads)
        mixer, mode, L = args.worker
        print(json.dumps(worker(mixer, mode, int(L), args.max_len, args.repeats, args.single_above)))
        return

    args.lengths = args.lengths or (QUICK_LENGTHS if args.quick else FULL_LENGTHS)
    started = time.strftime("%Y-%m-%d %H:%M")
    load0, t0 = os.getloadavg()[0], time.perf_counter()
    results: dict = {}
    from tqdm import tqdm

    bar = tqdm([(L, job) for L in args.lengths for job in JOBS], desc="configs")
    for L, (mixer, mode) in bar:
        bar.set_postfix_str(f"L={L} {mixer} {mode}")
        r = run_job(mixer, mode, L, args)
        results.setdefault(L, {})[(mixer, mode)] = r
        tqdm.write(f"L={L:>6} {mixer:>15} {mode:>6}: {json.dumps(r)}")
    text = render(results, args, started, (load0, os.getloadavg()[0]), time.perf_counter() - t0)
    print("\n" + text)
    if not (args.quick or args.no_write):
        write_section(args.out, text)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
