"""Real generate(): prefill seconds, decode tokens/s and memory per sequence, side by side.

SmolLM2-135M-shaped models (Llama: 30 layers, d=576, 9 heads / 3 KV heads, vocab 49152;
RANDOM weights: speed does not depend on their values), fp32, batch 1, greedy, one process:

- teacher:   the transformer with its KV cache;
- student:   the convolutional Hyena student with its MixerCache (past filter inputs, O(L) a token);
- recurrent: the Laughing Hyena student (modal order 16, random stable poles), O(1) a token;
- hybrid:    the recurrent student keeping the teacher's attention (and its KV cache) in 7 of
             the 30 layers (HYBRID_KEEP, the layers reports/recipes.md's hybrid keeps);
- multihyena, multihyena-recurrent: the same two students with MultiHyena mixers (one filter per
             head over q.k v; the cached one keeps k and v like a KV cache, the recurrent one a
             modes x N x N state per head).

Every model runs inside `hyena.model.generation.decode_layout` (as the project's generate
command does); `--stock-layout` adds rows at the shortest prompt without it. Each cell is one
`model.generate()` of a random prompt: a streamer stamps the clock when the prompt is handed
over and after each new token, so prefill = the time to the first new token and decode = the
mean time of the tokens after it. The machine's read bandwidth is measured in the same process
(sum of a 1 GiB array) and gives each model's floor per token: the bytes a decode step must read
(its matrices, plus the KV cache / history / state it attends to) over that bandwidth.

    python benchmarks/bench_generate.py [--prompts 128 1024 4096 16384] [--new-tokens 16] [--threads 2]
    python benchmarks/bench_generate.py --prompts 65536 --models teacher recurrent
    python benchmarks/bench_generate.py --prompts 128 --models teacher recurrent --synthetic-at 65536

`--synthetic-at L` times one decode step (a forward call with the cache) at context L without
the prefill: every KV cache (the teacher's, a hybrid's kept layers) holds L positions of random
keys and values; a Hyena layer's state comes from a short real prompt (its step does not depend
on L). A decode step's
work does not depend on what the cache holds, and the teacher's real 64K prefill would take about
45 minutes on this CPU.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import time

import torch
import torch.nn as nn
from transformers import AutoModelForCausalLM, LlamaConfig
from transformers.cache_utils import DynamicLayer

from hyena.model.build import StudentConfig, build_student
from hyena.model.generation import decode_layout
from hyena.model.operator import HyenaConfig
from hyena.recurrence.model import HyenaRecurrentForCausalLM, HyenaRecurrentHFConfig

CLOCK = time.perf_counter  # --cpu-time: time.process_time


def smollm2_config(max_positions: int) -> LlamaConfig:
    return LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                       num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=max_positions,
                       tie_word_embeddings=True, rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=2)


HYBRID_KEEP = [1, 2, 3, 4, 12, 14, 24]


def build_models(kinds: list[str], max_len: int, order: int = 16) -> dict[str, nn.Module]:
    torch.manual_seed(0)
    teacher = AutoModelForCausalLM.from_config(smollm2_config(max_len)).eval()
    models = {"teacher": teacher}
    if "student" in kinds or "recurrent" in kinds:
        student = build_student(teacher, StudentConfig(hyena=HyenaConfig(max_len=max_len)))
        models["student"] = student
        if "recurrent" in kinds:
            models["recurrent"] = recurrent_like(student, order)
    if "hybrid" in kinds:
        hybrid = build_student(teacher, StudentConfig(hyena=HyenaConfig(max_len=max_len), keep_attention=HYBRID_KEEP))
        models["hybrid"] = recurrent_like(hybrid, order)
    if "multihyena" in kinds or "multihyena-recurrent" in kinds:  # the teacher's 9 heads / 3 KV heads
        mh = build_student(teacher, StudentConfig(mixer="multihyena", init="teacher_attention",
                                                  hyena=HyenaConfig(max_len=max_len)))
        models["multihyena"] = mh
        if "multihyena-recurrent" in kinds:
            models["multihyena-recurrent"] = recurrent_like(mh, order)
    return {k: m.requires_grad_(False) for k, m in models.items() if k in kinds}


def recurrent_like(student, order: int) -> HyenaRecurrentForCausalLM:
    """The student's weights with random slow, stable modal filters (no fit: speed only)."""
    cfg = HyenaRecurrentHFConfig(**{k: v for k, v in student.config.to_dict().items()
                                  if k not in ("model_type", "architectures", "transformers_version")})
    cfg.modal = {"order": order}
    model = HyenaRecurrentForCausalLM(cfg).eval()
    model.load_state_dict(student.state_dict(), strict=False)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for i in model.hyena_layers():
            m = model.mixer(i).modal
            for p, (lo, hi) in ((m.log_decay, (-9, -3)), (m.theta, (0, 3.14))):
                p.copy_(torch.rand(p.shape, generator=g) * (hi - lo) + lo)
            m.residue_re.copy_(torch.randn(m.residue_re.shape, generator=g) * 0.1)
            m.residue_im.copy_(torch.randn(m.residue_im.shape, generator=g) * 0.1)
    return model


class Stamps:
    """A generate() streamer that records the clock at the prompt and after every new token."""

    def __init__(self):
        self.times: list[float] = []

    def put(self, _ids) -> None:
        self.times.append(CLOCK())

    def end(self) -> None:
        pass


@torch.no_grad()
def run_generate(model, L: int, new_tokens: int, seed: int = 0, vocab: int = 49152, device="cpu") -> dict:
    ids = torch.randint(3, vocab, (1, L), generator=torch.Generator().manual_seed(seed)).to(device)
    stamps = Stamps()
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                         min_new_tokens=new_tokens, do_sample=False, pad_token_id=0, use_cache=True,
                         streamer=stamps, return_dict_in_generate=True)
    t = stamps.times  # [prompt handed over, token 1, ..., token n]
    decode = (t[-1] - t[1]) / (len(t) - 2)
    return {"prefill_s": t[1] - t[0], "decode_s": decode, "state_bytes": state_bytes(out.cache),
            "tokens": out.sequences[0, L:].tolist()}


def state_bytes(cache) -> int:
    """Bytes of the decode state one sequence holds (a conv student: the positions used)."""
    total = 0
    for layer in cache.layers:
        if hasattr(layer, "held_bytes"):
            total += layer.held_bytes()
        elif hasattr(layer, "nbytes"):
            total += layer.nbytes()
        else:
            total += layer.keys.nbytes + layer.values.nbytes
    return total


def decode_weight_bytes(model: nn.Module) -> int:
    """Bytes of the matrices one decode step multiplies with (every Linear, the LM head once)."""
    seen, total = set(), 0
    for m in model.modules():
        if isinstance(m, nn.Linear) and id(m.weight) not in seen:
            seen.add(id(m.weight))
            total += m.weight.nbytes
    return total


def read_bandwidth(gib: float = 1.0) -> float:
    """Bytes/s of reading a fresh array larger than the caches (best of 5 sums)."""
    x = torch.ones(int(gib * 2**30) // 4)
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        x.sum()
        best = min(best, time.perf_counter() - t0)
    return x.nbytes / best


@torch.no_grad()
def gemv_layouts(model: nn.Module, repeats: int = 5) -> dict[str, float]:
    """Seconds for one x @ W^T with every Linear weight of `model` (copies; the model is not
    touched): fp32 and bf16, stock (out, in) rows and `decode_layout`'s (in, out) rows."""
    ws = [m.weight.detach().contiguous() for m in model.modules() if isinstance(m, nn.Linear)]
    sets = {}
    for dtype in (torch.float32, torch.bfloat16):
        stock = [w.to(dtype) for w in ws]
        sets[f"{str(dtype)[6:]} stock"] = stock
        sets[f"{str(dtype)[6:]} decode_layout"] = [w.t().contiguous().t() for w in stock]
    xs = {(w.shape[1], w.dtype): torch.randn(1, w.shape[1], dtype=w.dtype) for ws_ in sets.values() for w in ws_}

    def best(weights):
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            for w in weights:
                torch.nn.functional.linear(xs[(w.shape[1], w.dtype)], w)
            times.append(time.perf_counter() - t0)
        return min(times)

    out = {k: float("inf") for k in sets}
    for _ in range(3):  # interleaved, so that a change of load hits every variant
        for k, weights in sets.items():
            out[k] = min(out[k], best(weights))
    return out


def prefilled_cache(name: str, model: nn.Module, ids: torch.Tensor):
    """The model's decode cache after a prefill of ids (1, L): the teacher's DynamicCache, a
    student's MixerCache (a hybrid's holds KV layers too)."""
    if name == "teacher":
        return model(input_ids=ids, use_cache=True).past_key_values
    cache = model.new_cache()
    model(input_ids=ids, cache=cache, use_cache=True, logits_to_keep=1)
    return cache


def median_step(model: nn.Module, cache, steps: int) -> float:
    """Median seconds of `steps` one-token forward calls with the cache (after one untimed call)."""
    tok, times = torch.full((1, 1), 7), []
    for _ in range(steps + 1):
        t0 = CLOCK()
        model(input_ids=tok, cache=cache, use_cache=True, logits_to_keep=1)
        times.append(CLOCK() - t0)
    return sorted(times[1:])[steps // 2]


@torch.no_grad()
def step_breakdown(name: str, model: nn.Module, L: int, steps: int = 8) -> dict[str, float]:
    """Where one decode step's time goes at prompt L (median seconds): a whole generate() step,
    the model's forward of one token with its cache, and the Linear layers alone on one row."""
    ids = torch.randint(3, 49000, (1, L), generator=torch.Generator().manual_seed(0))
    gen = run_generate(model, L, steps + 1)["decode_s"]
    forward = median_step(model, prefilled_cache(name, model, ids), steps)
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    xs = {m.in_features: torch.randn(1, m.in_features) for m in linears}
    lin = []
    for _ in range(steps):
        t0 = CLOCK()
        for m in linears:
            m(xs[m.in_features])
        lin.append(CLOCK() - t0)
    return {"generate": gen, "forward": forward, "linears": sorted(lin)[steps // 2]}


@torch.no_grad()
def synthetic_step(name: str, model: nn.Module, L: int, steps: int = 8) -> float:
    """Median seconds of one decode step at context L, the cache filled without a prefill (see
    the module docstring)."""
    cache = prefilled_cache(name, model, torch.randint(3, 49000, (1, 16), generator=torch.Generator().manual_seed(0)))
    g = torch.Generator().manual_seed(1)
    for layer in cache.layers:
        if isinstance(layer, DynamicLayer):  # (B, kv heads, L, head dim) random keys and values
            layer.keys = torch.randn(layer.keys.shape[:2] + (L, layer.keys.shape[-1]), generator=g)
            layer.values = torch.randn(layer.keys.shape, generator=g)
        else:  # a Hyena layer's state: the same work at any position
            layer.seen = L
    return median_step(model, cache, steps)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, nargs="+", default=[128, 1024, 4096, 16384])
    ap.add_argument("--models", nargs="+", default=["teacher", "student", "recurrent"],
                    choices=["teacher", "student", "recurrent", "hybrid", "multihyena", "multihyena-recurrent"])
    ap.add_argument("--new-tokens", type=int, default=16, help="tokens generated per cell (decode = mean of the last n-1)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--cpu-time", action="store_true", help="process CPU time instead of wall clock")
    ap.add_argument("--stock-layout", action="store_true", help="also time every model at the shortest prompt without decode_layout")
    ap.add_argument("--breakdown", action="store_true", help="split one decode step at the shortest prompt into generate() / forward / matmuls")
    ap.add_argument("--no-cache-student-at", type=int, nargs="*", default=[],
                    help="also time the student re-running the whole prefix each step (use_cache=False) at these prompts (2 tokens)")
    ap.add_argument("--synthetic-at", type=int, nargs="*", default=[],
                    help="also time one decode step of the teacher, recurrent and hybrid students at these contexts without a prefill")
    args = ap.parse_args()
    global CLOCK
    CLOCK = time.process_time if args.cpu_time else time.perf_counter
    torch.set_num_threads(args.threads)
    load0 = os.getloadavg()
    max_len = max(args.prompts + args.synthetic_at) + args.new_tokens + 1
    models = build_models(args.models, max_len)
    bw = read_bandwidth()
    print(f"SmolLM2-135M shape, random weights, fp32, batch 1, greedy, {args.new_tokens} new tokens, "
          f"{args.threads} threads, {'process CPU time' if args.cpu_time else 'wall clock'}; "
          f"torch {torch.__version__}; load average {load0[0]:.1f}")
    print(f"read bandwidth {bw / 1e9:.1f} GB/s (sum of a 1 GiB array, same process)")
    weights = {k: decode_weight_bytes(m) for k, m in models.items()}
    gemv = gemv_layouts(next(iter(models.values())))
    print(f"one x @ W^T per Linear weight of the {next(iter(models))} (ms): " +
          ", ".join(f"{k} {v * 1e3:.1f}" for k, v in gemv.items()) +
          f"; decode_layout gains {gemv['float32 stock'] / gemv['float32 decode_layout']:.2f}x in fp32")
    for k in models:
        print(f"{k}: {weights[k] / 1e6:.0f} MB of decode matrices -> floor {weights[k] / bw * 1e3:.1f} ms/token + its state reads")
    rows = []
    if args.stock_layout:
        L = min(args.prompts)
        for k, m in models.items():
            m.generate(torch.full((1, 8), 5), max_new_tokens=2, do_sample=False, pad_token_id=0)  # warm-up
            r = run_generate(m, L, args.new_tokens)
            rows.append((k + " (stock layout)", L, r, weights[k]))
            print(f"  {k} stock layout L={L}: prefill {r['prefill_s']:.2f} s, {1 / r['decode_s']:.1f} tok/s", flush=True)
    layouts = contextlib.ExitStack()
    for m in models.values():
        layouts.enter_context(decode_layout(m))
        m.generate(torch.full((1, 8), 5), max_new_tokens=2, do_sample=False, pad_token_id=0)  # warm-up
    if args.breakdown:
        L = min(args.prompts)
        for k, m in models.items():
            b = step_breakdown(k, m, L)
            print(f"  {k} L={L} one decode step (ms): generate() {b['generate'] * 1e3:.1f}, model forward "
                  f"{b['forward'] * 1e3:.1f}, its Linear layers alone {b['linears'] * 1e3:.1f} -> generate() "
                  f"overhead {(b['generate'] - b['forward']) * 1e3:.1f}, non-matmul work "
                  f"{(b['forward'] - b['linears']) * 1e3:.1f}", flush=True)
    tokens = {}
    for L in args.prompts:
        for k, m in models.items():
            if k in ("student", "multihyena") and L > 16384:
                continue
            r = run_generate(m, L, args.new_tokens)
            tokens[(k, L)] = r["tokens"]
            rows.append((k, L, r, weights[k]))
            print(f"  {k} L={L}: prefill {r['prefill_s']:.2f} s, {1 / r['decode_s']:.1f} tok/s, "
                  f"state {r['state_bytes'] / 2**20:.2f} MiB", flush=True)
    for L in args.no_cache_student_at:
        if "student" in models:
            m = models["student"]
            ids = torch.randint(3, 49000, (1, L), generator=torch.Generator().manual_seed(0))
            stamps = Stamps()
            m.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=3, min_new_tokens=3,
                       do_sample=False, pad_token_id=0, use_cache=False, streamer=stamps)
            t = stamps.times
            print(f"  student without cache L={L}: {(t[-1] - t[1]) / (len(t) - 2):.2f} s/token", flush=True)
            rows.append(("student, no cache (re-runs the prefix)", L,
                         {"prefill_s": t[1] - t[0], "decode_s": (t[-1] - t[1]) / (len(t) - 2), "state_bytes": 0}, weights["student"]))
    synthetic = {}
    for L in args.synthetic_at:
        for k in ("teacher", "recurrent", "hybrid", "multihyena-recurrent"):
            if k in models:
                synthetic[(k, L)] = synthetic_step(k, models[k], L)
                print(f"  {k} one decode step at context {L} (synthetic cache): {synthetic[(k, L)] * 1e3:.1f} ms", flush=True)
        for k in ("recurrent", "hybrid", "multihyena-recurrent"):
            if ("teacher", L) in synthetic and (k, L) in synthetic:
                print(f"  context {L}: {k} step {synthetic[('teacher', L)] / synthetic[(k, L)]:.2f}x faster than the teacher's")
    print()
    print("| model | prompt | prefill s | decode tok/s | ms/token | floor ms/token | vs floor | vs teacher tok/s | state MiB/sequence |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    teacher = {L: r for k, L, r, _ in rows if k == "teacher"}
    for k, L, r, wbytes in rows:
        floor = (wbytes + r["state_bytes"]) / bw  # a step reads the matrices and the state once
        vs = f"{teacher[L]['decode_s'] / r['decode_s']:.2f}x" if L in teacher and k != "teacher" else "-"
        print(f"| {k} | {L} | {r['prefill_s']:.2f} | {1 / r['decode_s']:.1f} | {r['decode_s'] * 1e3:.1f} | "
              f"{floor * 1e3:.1f} | {r['decode_s'] / floor:.2f}x | {vs} | {r['state_bytes'] / 2**20:.2f} |")
    for kind in ("recurrent", "hybrid"):
        if "teacher" in models and kind in models:
            print(f"\nprefill {kind} / teacher: " + ", ".join(
                f"{L}: {teacher[L]['prefill_s'] / r['prefill_s']:.2f}x faster" for k, L, r, _ in rows
                if k == kind and L in teacher))
    print(f"load average at the end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
