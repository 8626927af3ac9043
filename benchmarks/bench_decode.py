"""Per-token decode latency and state memory per sequence vs context length.

Three decoders of the same SmolLM2-135M-shaped network (Llama: 30 layers, d=576, 9 heads / 3 KV
heads, vocab 49152; RANDOM weights: timing does not depend on their values):

- teacher:    the transformer with its KV cache (HF DynamicCache holding L positions);
- student:    the Hyena student recomputing its long convolution over the whole prefix for every
              new token (FFT over L; past gated inputs cached, so everything else is per-token);
- recurrent:  the Laughing Hyena student: modal state (order-1)*d*N complex + FIR state, O(1).

Each state is filled to context L directly (random keys/values, random gated inputs / modal
state): a decode step costs the same whatever the values, and prefilling 16K tokens per model
would take minutes on 2 cores. Every step is a full HF forward of one token through the model.

    python benchmarks/bench_decode.py [--contexts 1024 2048 4096 8192 16384] [--steps 5] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from transformers import AutoModelForCausalLM, DynamicCache, LlamaConfig

from hyena.model.fftconv import fft_causal_conv
from hyena.model.operator import HyenaConfig
from hyena.recurrence.mixer import HyenaRecurrentCache, ModalLayerState, RecurrentHyenaMixer
from hyena.recurrence.model import HyenaRecurrentForCausalLM, HyenaRecurrentHFConfig

CPU_TIME = False  # --cpu-time: process CPU seconds instead of wall (robust on a shared machine)


def smollm2_config() -> LlamaConfig:
    return LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                       num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=32768,
                       tie_word_embeddings=True, rms_norm_eps=1e-5)


class PrefixConvMixer(RecurrentHyenaMixer):
    """Decode step of the convolutional student: append this token's gated input to the history
    and recompute the long convolution over the whole prefix (FFT), keeping its last output."""
    def step(self, u: torch.Tensor, state: ModalLayerState) -> torch.Tensor:
        d = self.d_model
        z = self.in_proj(u)  # (B, W)
        win = torch.cat([state.fir, z[..., None]], dim=-1)
        state.fir = win[..., 1:]
        z = (win * self.short_filter.weight[:, 0, :]).sum(-1) + self.short_filter.bias
        *x, v = z.split(d, dim=-1)
        n = state.seen + 1
        h = self.tail_kernel(state.history.shape[-1])  # cached, as the student caches its filters
        for o, x_i in enumerate(reversed(x[1:])):
            state.history[:, o, :, n - 1] = v * x_i  # (B, d)
            v = fft_causal_conv(state.history[:, o, :, :n], h[o], self.modal.D[o])[..., -1]
        state.seen = n
        return self.out_proj(v * x[0])


def build(kind: str, teacher_cfg: LlamaConfig, max_len: int, order: int):
    if kind == "teacher":
        return AutoModelForCausalLM.from_config(teacher_cfg).eval()
    cfg = HyenaRecurrentHFConfig(teacher_config=teacher_cfg.to_dict(), hyena=HyenaConfig(max_len=max_len).to_dict(),
                               modal={"order": order})
    model = HyenaRecurrentForCausalLM(cfg).eval()
    for i, layer in enumerate(model.decoder_layers()):
        mixer = model.mixer(i)
        with torch.no_grad():
            mixer.modal.log_decay.uniform_(-9, -3)  # slow random poles: a long-memory filter
            mixer.modal.theta.uniform_(0, 3.14)
            mixer.modal.residue_re.normal_(0, 0.1)
            mixer.modal.residue_im.normal_(0, 0.1)
        if kind == "student":
            conv = PrefixConvMixer(mixer.d_model, mixer.cfg, order, layer_idx=i)
            conv.load_state_dict(mixer.state_dict())
            model.adapter.set_attention(layer, conv.eval())
    return model


def fill_state(kind: str, model, L: int, B: int = 1):
    """A cache holding context L (random contents), and its bytes."""
    g = torch.Generator().manual_seed(0)
    if kind == "teacher":
        c = model.config
        cache = DynamicCache(config=c)
        hd = c.hidden_size // c.num_attention_heads
        for i in range(c.num_hidden_layers):
            kv = torch.randn(2, B, c.num_key_value_heads, L, hd, generator=g)
            cache.update(kv[0], kv[1], i)
        nbytes = sum(lay.keys.nbytes + lay.values.nbytes for lay in cache.layers)
        return cache, nbytes
    cache = HyenaRecurrentCache(len(model.decoder_layers()))
    nbytes = 0
    for i, st in enumerate(cache.layers):
        m = model.mixer(i)
        k = m.short_filter.kernel_size[0]
        F_, d, N = m.modal.log_decay.shape
        st.fir = torch.randn(B, m.in_proj.out_features, k - 1, generator=g)
        st.modal = torch.complex(torch.randn(B, F_, d, N, generator=g), torch.randn(B, F_, d, N, generator=g))
        st.seen = L
        if kind == "student":
            st.history = torch.randn(B, F_, d, L + 64, generator=g)  # gated inputs of the prefix
            nbytes += st.history.nbytes + st.fir.nbytes
            st.modal = None
        else:
            nbytes += st.nbytes()
    return cache, nbytes


@torch.no_grad()
def time_decode(kind: str, model, L: int, steps: int, B: int = 1) -> tuple[float, int]:
    """Median seconds per decode step of B sequences, and the state bytes of ONE sequence."""
    cache, nbytes = fill_state(kind, model, L, B)
    nbytes //= B
    tok = torch.full((B, 1), 42)
    times = []
    for s in range(steps + 1):  # first step warms up (filter materialisation, allocator)
        pos = torch.full((B, 1), L + s)
        t0 = time.perf_counter() if not CPU_TIME else time.process_time()
        model(input_ids=tok, cache=cache, use_cache=True, position_ids=pos)
        times.append((time.perf_counter() if not CPU_TIME else time.process_time()) - t0)
    return statistics.median(times[1:]), nbytes


def analytic_bytes(kind: str, c: LlamaConfig, L: int, order: int, k: int = 3) -> int:
    d, n_layers = c.hidden_size, c.num_hidden_layers
    if kind == "teacher":
        return 2 * n_layers * c.num_key_value_heads * (d // c.num_attention_heads) * L * 4
    fir = n_layers * 3 * d * (k - 1) * 4
    if kind == "student":
        return n_layers * d * L * 4 + fir
    return n_layers * d * order * 8 + fir


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--contexts", type=int, nargs="+", default=[1024, 2048, 4096, 8192, 16384])
    ap.add_argument("--steps", type=int, default=5, help="timed decode steps per point (median)")
    ap.add_argument("--order", type=int, default=16, help="modal order N")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=1, help="sequences decoded together (ms/tok is per step)")
    ap.add_argument("--cpu-time", action="store_true", help="time with process CPU time, not wall clock")
    args = ap.parse_args()
    global CPU_TIME
    CPU_TIME = args.cpu_time
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = smollm2_config()
    max_len = max(args.contexts) + 64
    models = {k: build(k, cfg, max_len, args.order) for k in ("teacher", "student", "recurrent")}
    clock = "process CPU time" if CPU_TIME else "wall clock"
    print(f"SmolLM2-135M shape, random weights, fp32, batch {args.batch} (ms per decode step of the batch; memory per sequence), {args.threads} threads, N={args.order}, {clock}")
    print("| context | teacher ms/tok | student ms/tok | recurrent ms/tok | recurrent vs teacher tok/s | "
          "recurrent vs student | teacher KV MiB | student history MiB | recurrent state MiB |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for L in args.contexts:
        res = {}
        for kind, model in models.items():
            sec, nbytes = time_decode(kind, model, L, args.steps, args.batch)
            assert nbytes == analytic_bytes(kind, cfg, L if kind == "teacher" else L + 64 if kind == "student" else L, args.order) \
                or kind == "student", (kind, nbytes)
            res[kind] = (sec, nbytes)
        t, s, r = (res[k][0] * 1e3 for k in ("teacher", "student", "recurrent"))
        mib = [res[k][1] / 2**20 for k in ("teacher", "student", "recurrent")]
        print(f"| {L} | {t:.1f} | {s:.1f} | {r:.1f} | {t / r:.1f}x | {s / r:.1f}x | "
              f"{mib[0]:.1f} | {mib[1]:.1f} | {mib[2]:.2f} |", flush=True)


if __name__ == "__main__":
    main()
