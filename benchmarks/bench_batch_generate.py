"""Batched generation throughput: teacher, recurrent student and hybrid side by side, by batch size.

SmolLM2-135M-shaped models (bench_generate.py's: Llama, 30 layers, d=576, 9 / 3 KV heads, vocab
49152, RANDOM weights: speed does not depend on their values), fp32, greedy, in
`decode_layout`. Each cell (model, batch B, context L) runs in a FRESH subprocess, so its peak
resident memory is its own:

- the model is built, then the peak-RSS counter is reset (/proc/self/clear_refs; the build's
  transients do not count);
- its decode state is filled to L positions for B sequences WITHOUT a prefill: KV caches hold L
  positions of random keys and values, a Hyena layer's state comes from a real 16-token prefill
  and is then told it has seen L tokens (a modal step does the same work at any position). A
  step's work does not depend on the state's values, and the teacher's real prefill of 32 x 4K
  tokens would take ~10 minutes here;
- one real `model.generate()` of `--new-tokens` tokens for all B rows from that state (greedy,
  min_new_tokens = max_new_tokens: no row stops early); a streamer stamps the clock after each
  token; decode tokens/s = B * (n - 1) / (time from token 1 to token n), summed over the batch;
- peak RSS (VmHWM) of the process during state building and generation: weights + runtime +
  state + the step's transients.

Cells whose analytic state alone exceeds `--cap-gib` are not run (marked "> cap").

The largest batch within the cap at each `--fit-at` context is computed from the measurements:
fixed = peak(B=1) - state(1), per sequence = (peak(B=b) - peak(B=1)) / (b - 1) at the largest
measured b at the longest measured context, with its state part rescaled to the target context;
max batch = floor((cap - fixed) / per-sequence). `--verify-at L` then runs that batch at context
L for 2 new tokens and reports its measured peak against the cap.

    python benchmarks/bench_batch_generate.py [--batches 1 8 32 64] [--prompts 512 4096] [--new-tokens 128]
        [--models teacher recurrent hybrid] [--cap-gib 8] [--fit-at 4096 8192] [--verify-at 8192] [--threads 1] [--cpu-time]
        [--batch1-at 128] [--plot benchmarks/batch_throughput.png]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM
from transformers.cache_utils import DynamicLayer

sys.path.insert(0, str(Path(__file__).parent))
from bench_generate import HYBRID_KEEP, smollm2_config, state_bytes  # noqa: E402

from hyena.model.generation import decode_layout  # noqa: E402
from hyena.model.operator import HyenaConfig  # noqa: E402
from hyena.recurrence.model import HyenaRecurrentForCausalLM, HyenaRecurrentHFConfig  # noqa: E402


def analytic_state_bytes(name: str, L: int, model=None) -> int:
    """Decode state of one sequence at context L: fp32 keys + values per KV layer and position,
    complex64 modal state (order 16) + the short conv's 2 FIR taps of 3d channels per Hyena
    layer. SmolLM2 shapes (30 layers, d 576, 3 KV heads of 64) unless `model` is given."""
    cfg = getattr(model, "config", None)
    arch = cfg.teacher_architecture() if hasattr(cfg, "teacher_architecture") else cfg
    n, d, kv, hd = (30, 576, 3, 64) if arch is None else (
        arch.num_hidden_layers, arch.hidden_size, arch.num_key_value_heads, arch.hidden_size // arch.num_attention_heads)
    keep = len(HYBRID_KEEP) if cfg is None else len(getattr(cfg, "keep_attention", None) or [])
    kv_layers = {"teacher": n, "recurrent": 0, "hybrid": keep}[name]
    return kv_layers * 2 * kv * hd * 4 * L + (n - kv_layers) * (d * 16 * 8 + 3 * d * 2 * 4)


# --- one cell, in its own process -------------------------------------------------------------


def build(model: str, max_len: int, config=smollm2_config, keep: list[int] = HYBRID_KEEP) -> torch.nn.Module:
    """The teacher (config(max_len)), its recurrent student, or the hybrid keeping `keep`'s attention."""
    torch.manual_seed(0)
    if model == "teacher":
        return AutoModelForCausalLM.from_config(config(max_len)).eval().requires_grad_(False)
    cfg = HyenaRecurrentHFConfig(teacher_config=config(max_len).to_dict(),
                               hyena=HyenaConfig(max_len=max_len).to_dict(), modal={"order": 16},
                               keep_attention=keep if model == "hybrid" else [])
    m = HyenaRecurrentForCausalLM(cfg).eval().requires_grad_(False)
    g = torch.Generator().manual_seed(1)
    for i in m.hyena_layers():  # slow, stable random modes (as bench_generate's recurrent_like)
        modal = m.mixer(i).modal
        modal.log_decay.copy_(torch.rand(modal.log_decay.shape, generator=g) * 6 - 9)
        modal.theta.copy_(torch.rand(modal.theta.shape, generator=g) * 3.14)
        modal.residue_re.copy_(torch.randn(modal.residue_re.shape, generator=g) * 0.1)
        modal.residue_im.copy_(torch.randn(modal.residue_im.shape, generator=g) * 0.1)
    return m


def synthetic_cache(name: str, model, B: int, L: int, device="cpu"):
    """A decode cache of B sequences that has 'seen' L positions (see the module docstring)."""
    vocab = model.config.vocab_size
    ids = torch.randint(3, vocab, (B, 16), generator=torch.Generator().manual_seed(0)).to(device)
    if name == "teacher":
        cache = model(input_ids=ids, use_cache=True, logits_to_keep=1).past_key_values
    else:
        cache = model.new_cache()
        model(input_ids=ids, cache=cache, use_cache=True, logits_to_keep=1)
    for layer in cache.layers:
        if isinstance(layer, DynamicLayer):  # (B, KV heads, L, head dim)
            block = torch.randn(*layer.keys.shape[:2], 256, layer.keys.shape[-1],  # tiled: randn of GBs is slow
                                generator=torch.Generator().manual_seed(1)).to(device)
            layer.keys = block.repeat(1, 1, math.ceil(L / 256), 1)[:, :, :L].contiguous()
            layer.values = layer.keys.flip(-1).contiguous()
        else:
            layer.seen = L
    return cache


def reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def rss(field: str) -> int:
    """VmRSS / VmHWM of this process in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(field)


class Stamps:
    """A generate() streamer that records the clock (after `sync`) at the prompt and each new token."""

    def __init__(self, clock, sync=None):
        self.clock, self.sync, self.times = clock, sync, []

    def put(self, _ids) -> None:
        if self.sync is not None:
            self.sync()
        self.times.append(self.clock())

    def end(self) -> None:
        pass


@torch.no_grad()
def timed_generate(name: str, model, B: int, L: int, new_tokens: int, clock=time.perf_counter,
                   real_prefill: bool = False, device="cpu", sync=None) -> dict:
    """One generate() of `new_tokens` for B rows after L positions (synthetic state unless
    `real_prefill`): seconds per step of all rows, tokens/s summed over the rows."""
    ids = torch.randint(3, model.config.vocab_size, (B, L), generator=torch.Generator().manual_seed(2)).to(device)
    kw = {}
    if not real_prefill:  # the cache holds L positions already: generate() feeds the last token only
        kw["cache"] = synthetic_cache(name, model, B, L, device)
        ids = torch.cat([ids, ids[:, -1:]], dim=1)
    stamps = Stamps(clock, sync)
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                         min_new_tokens=new_tokens, do_sample=False, pad_token_id=0, use_cache=True,
                         streamer=stamps, return_dict_in_generate=True, **kw)
    t = stamps.times
    assert out.sequences.shape == (B, ids.shape[1] + new_tokens)
    step = (t[-1] - t[1]) / (len(t) - 2)  # seconds per step of all B rows
    return {"step_s": step, "tok_s": B / step, "prefill_s": t[1] - t[0] if real_prefill else None,
            "state_bytes": state_bytes(out.past_key_values if name == "teacher" else out.cache) // B}


def run_cell(name: str, B: int, L: int, new_tokens: int, clock, real_prefill: bool = False) -> dict:
    model = build(name, L + new_tokens + 16)
    with decode_layout(model):
        with torch.no_grad():
            model.generate(torch.full((1, 8), 5), max_new_tokens=2, do_sample=False, pad_token_id=0)  # warm-up
        peak_reset = reset_peak()
        rss0 = rss("VmRSS")
        r = timed_generate(name, model, B, L, new_tokens, clock, real_prefill)
    return {"model": name, "batch": B, "context": L, "new_tokens": new_tokens, **r,
            "peak_bytes": rss("VmHWM"), "rss_before_bytes": rss0, "peak_reset": peak_reset,
            "analytic_state_bytes": analytic_state_bytes(name, L + new_tokens)}


# --- the driver -----------------------------------------------------------------------------------


def run_subprocess(args, name: str, B: int, L: int, new_tokens: int, real_prefill: bool = False) -> dict:
    cmd = [sys.executable, __file__, "--cell", name, str(B), str(L), "--new-tokens", str(new_tokens),
           "--threads", str(args.threads)] + (["--cpu-time"] if args.cpu_time else []) + \
          (["--real-prefill"] if real_prefill else [])
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        return {"model": name, "batch": B, "context": L, "error": r.stderr.strip().splitlines()[-1:]}
    return json.loads(r.stdout.strip().splitlines()[-1])


def fits(name: str, B: int, L: int, cap: float) -> bool:
    return B * analytic_state_bytes(name, L) < cap


def max_batch(rows: list[dict], name: str, L: int, cap: float) -> tuple[int, float, float]:
    """(largest batch within cap at context L, fixed bytes, bytes per sequence) from the measured cells."""
    mine = [r for r in rows if r["model"] == name and "error" not in r]
    Lm = max(r["context"] for r in mine)
    at = sorted((r for r in mine if r["context"] == Lm), key=lambda r: r["batch"])
    one, big = at[0], at[-1]
    fixed = one["peak_bytes"] - one["state_bytes"]
    per_seq = (big["peak_bytes"] - one["peak_bytes"]) / (big["batch"] - one["batch"])
    per_seq += analytic_state_bytes(name, L) - analytic_state_bytes(name, Lm)  # the state grows with L
    return int((cap - fixed) // per_seq), fixed, per_seq


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    contexts = sorted({r["context"] for r in rows if r.get("tok_s")})
    fig, axes = plt.subplots(1, len(contexts), figsize=(5 * len(contexts), 4), sharey=True, squeeze=False)
    axes = axes[0]
    for ax, L in zip(axes, contexts, strict=True):
        for name, style in (("teacher", "o-"), ("recurrent", "s-"), ("hybrid", "^-")):
            pts = sorted((r["batch"], r["tok_s"]) for r in rows if r["model"] == name and r["context"] == L and r.get("tok_s"))
            if pts:
                batches, tok_s = zip(*pts, strict=True)
                ax.plot(batches, tok_s, style, label=name)
        ax.set(xscale="log", yscale="log", xlabel="batch (sequences)", title=f"context {L}")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("generated tokens/s (all rows)")
    axes[0].legend()
    fig.suptitle("Decode throughput, SmolLM2-135M shapes, fp32, CPU")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32, 64])
    ap.add_argument("--prompts", type=int, nargs="+", default=[512, 4096])
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--models", nargs="+", default=["teacher", "recurrent", "hybrid"], choices=["teacher", "recurrent", "hybrid"])
    ap.add_argument("--cap-gib", type=float, default=8.0)
    ap.add_argument("--fit-at", type=int, nargs="*", default=[4096, 8192])
    ap.add_argument("--verify-at", type=int, nargs="*", default=[], help="run the computed largest batch at these --fit-at contexts (2 new tokens) and measure its peak")
    ap.add_argument("--batch1-at", type=int, nargs="*", default=[], help="also real generate() (with prefill) at batch 1 at these prompts")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--cpu-time", action="store_true", help="process CPU time instead of wall clock")
    ap.add_argument("--plot", type=Path, default=None)
    ap.add_argument("--json", type=Path, default=None, help="write every cell's result here")
    ap.add_argument("--verify-batch", nargs="*", default=[], metavar="MODEL=B",
                    help="verify these batches instead of the computed largest (e.g. recurrent=950 when the machine cannot spare the cap)")
    ap.add_argument("--verify-models", nargs="*", default=None, help="models --verify-at runs (default: all)")
    ap.add_argument("--cells-from", type=Path, default=None,
                    help="reuse the cells of an earlier run's output (its JSON lines); run only the missing ones")
    ap.add_argument("--cell", nargs=3, metavar=("MODEL", "B", "L"), help=argparse.SUPPRESS)
    ap.add_argument("--real-prefill", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    clock = time.process_time if args.cpu_time else time.perf_counter
    if args.cell:
        name, B, L = args.cell[0], int(args.cell[1]), int(args.cell[2])
        print(json.dumps(run_cell(name, B, L, args.new_tokens, clock, args.real_prefill)))
        return
    cap = args.cap_gib * 2**30
    load0 = os.getloadavg()
    print(f"SmolLM2-135M shapes, random weights, fp32, greedy, {args.new_tokens} new tokens, {args.threads} thread(s), "
          f"{'process CPU time' if args.cpu_time else 'wall clock'}, torch {torch.__version__}, cap {args.cap_gib} GiB; "
          f"load average {load0[0]:.1f}", flush=True)
    done = {}
    if args.cells_from:
        for line in args.cells_from.read_text().splitlines():
            if line.strip().startswith("{"):
                r = json.loads(line)
                done[(r["model"], r["batch"], r["context"], r["prefill_s"] is not None)] = r
    verify_batch = {k: int(v) for k, v in (x.split("=") for x in args.verify_batch)}
    rows = []

    def cell(args, name, B, L, new_tokens, real_prefill=False):  # an earlier run's result, if any
        key = (name, B, L, real_prefill)
        return done[key] if key in done else run_subprocess(args, name, B, L, new_tokens, real_prefill)

    for L in args.batch1_at:  # batch 1 with a real prefill, the issue-14 comparison
        for name in args.models:
            r = cell(args, name, 1, L, args.new_tokens, real_prefill=True)
            print(f"  {json.dumps(r)}", flush=True)
            rows.append({**r, "real_prefill": True})
    for L in args.prompts:
        for B in args.batches:
            for name in args.models:
                if not fits(name, B, L, cap):
                    print(f"  {name} B={B} L={L}: state {B * analytic_state_bytes(name, L) / 2**30:.1f} GiB > cap, not run", flush=True)
                    rows.append({"model": name, "batch": B, "context": L, "over_cap": True})
                    continue
                r = cell(args, name, B, L, args.new_tokens)
                rows.append(r)
                print(f"  {json.dumps(r)}", flush=True)
    table(rows, args)
    fit_rows = [r for r in rows if r.get("tok_s") and not r.get("real_prefill")]
    print(f"\nlargest batch within {args.cap_gib} GiB (fixed = peak at B=1 minus its state; per sequence from the largest measured batch):")
    best = {}
    for L in args.fit_at:
        for name in args.models:
            n, fixed, per_seq = max_batch(fit_rows, name, L, cap)
            best[(name, L)] = n
            line = f"  L={L} {name}: {n} sequences (fixed {fixed / 2**30:.2f} GiB, {per_seq / 2**20:.2f} MiB/sequence)"
            if L in args.verify_at and (args.verify_models is None or name in args.verify_models):
                b = verify_batch.get(name, n)
                v = run_subprocess(args, name, b, L, 2)
                line += (f"; measured at B={b}: peak {v['peak_bytes'] / 2**30:.2f} GiB (predicted {(fixed + b * per_seq) / 2**30:.2f})"
                         if "error" not in v else f"; verify failed {v['error']}")
                rows.append({**v, "verify": True})
            print(line, flush=True)
        if ("teacher", L) in best:
            for name in ("recurrent", "hybrid"):
                if (name, L) in best:
                    print(f"  L={L}: {name} fits {best[(name, L)] / max(best[('teacher', L)], 1):.1f}x the teacher's sequences")
    if args.plot:
        plot(fit_rows, args.plot)
        print(f"plot: {args.plot}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    print(f"load average at the end: {os.getloadavg()[0]:.1f}")


def table(rows: list[dict], args) -> None:
    print("\n| context | batch | model | tok/s (all rows) | ms/step | vs teacher | peak RSS GiB | state MiB/seq |")
    print("|---:|---:|---|---:|---:|---:|---:|---:|")
    teacher = {(r["context"], r["batch"], bool(r.get("real_prefill"))): r for r in rows if r["model"] == "teacher" and r.get("tok_s")}
    for r in rows:
        key = (r["context"], r["batch"], bool(r.get("real_prefill")))
        head = f"| {r['context']}{' (real prefill)' if r.get('real_prefill') else ''} | {r['batch']} | {r['model']} |"
        if r.get("over_cap"):
            print(head + f" > cap | | | (state {r['batch'] * analytic_state_bytes(r['model'], r['context']) / 2**30:.1f} GiB) | |")
        elif "error" in r:
            print(head + f" failed: {r['error']} | | | | |")
        else:
            vs = f"{r['tok_s'] / teacher[key]['tok_s']:.2f}x" if key in teacher and r["model"] != "teacher" else "-"
            print(head + f" {r['tok_s']:.1f} | {r['step_s'] * 1e3:.1f} | {vs} | {r['peak_bytes'] / 2**30:.2f} | "
                  f"{r['state_bytes'] / 2**20:.2f} |")


if __name__ == "__main__":
    main()
