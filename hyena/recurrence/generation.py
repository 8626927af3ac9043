"""Text generation for the teacher, the convolutional student and the recurrent student.

Each kind decodes with the cheapest exact method it has:
- transformer teacher: its KV cache (O(L) per token);
- convolutional Hyena student: its MixerCache of past filter inputs (O(L) per token);
- recurrent student: FFT prefill, then the modal recurrence (O(1) per token).

At batch 1 a decode step is a matrix-vector product with every weight, so its time is set by
how fast those weights stream from memory; `decode_layout` stores them the way this CPU's BLAS
streams fastest (BENCHMARKS.md, "Generation").
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass

import torch

from hyena.decode_step import pack_gate_up, unpack_gate_up


@dataclass
class Sampling:
    """Decoding options (greedy ignores the rest)."""

    greedy: bool = False  # argmax decoding
    temperature: float = 1.0  # softmax temperature (> 0)
    top_k: int = 50  # keep the k most likely tokens (0: all)
    top_p: float = 1.0  # nucleus: smallest set with this much probability mass
    seed: int = 0  # sampling RNG seed

    def __post_init__(self) -> None:
        if self.temperature <= 0:
            raise ValueError(f"--temperature must be > 0 (got {self.temperature}); use --greedy for argmax")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"--top-p must be in (0, 1] (got {self.top_p})")
        if self.top_k < 0:
            raise ValueError(f"--top-k must be >= 0 (got {self.top_k})")


@contextlib.contextmanager
def decode_layout(model: torch.nn.Module):
    """Within the block every Linear weight W (out, in) is the transposed view of a contiguous
    (in, out) array: same values, shape and dtype, other strides. On CPU, MKL's x @ W^T for one
    row x streams a contiguous W^T faster than a contiguous W (measured on these EPYC cores:
    BENCHMARKS.md, "Generation"); large-batch matmuls run the same either way. A gated MLP's gate
    and up projections become two views of one such array (`hyena.decode_step.pack_gate_up`), which
    the students' decode step reads with one GEMV. The standard layout comes back on exit
    (save_pretrained needs it). Tied weights follow (one Parameter); other devices are left alone."""
    moved, packed = [], [m for m in model.modules() if pack_gate_up(m)]
    with torch.no_grad():
        for module in model.modules():
            w = getattr(module, "weight", None) if isinstance(module, torch.nn.Linear) else None
            if w is not None and w.device.type == "cpu" and w.dim() == 2 and w.is_contiguous() \
                    and min(w.shape) > 1 and all(w is not m for m in moved):
                w.data = w.data.t().contiguous().t()
                moved.append(w)
    try:
        yield model
    finally:
        with torch.no_grad():
            for w in moved:
                w.data = w.data.contiguous()
            for m in packed:
                unpack_gate_up(m)


def model_kind(model) -> str:
    """"recurrent" | "student" | "transformer"."""
    from hyena.recurrence.model import HyenaRecurrentForCausalLM
    from hyena.student import HyenaStudentForCausalLM

    if isinstance(model, HyenaRecurrentForCausalLM):
        return "recurrent"
    if isinstance(model, HyenaStudentForCausalLM):
        return "student"
    return "transformer"


@torch.no_grad()
def generate(model, input_ids: torch.Tensor, max_new_tokens: int, sampling: Sampling) -> tuple[torch.Tensor, float]:
    """HF generate() with the cache of the model's kind, in `decode_layout`; returns (new token
    ids (B, T), seconds, the layout changes included)."""
    kwargs = {"max_new_tokens": max_new_tokens, "attention_mask": torch.ones_like(input_ids), "use_cache": True}
    if sampling.greedy:
        kwargs.update(do_sample=False, temperature=None, top_k=None, top_p=None)
    else:
        kwargs.update(do_sample=True, temperature=sampling.temperature, top_k=sampling.top_k or None,
                      top_p=sampling.top_p)
        torch.manual_seed(sampling.seed)
    pad = model.generation_config.pad_token_id
    if pad is None:
        eos = model.generation_config.eos_token_id
        kwargs["pad_token_id"] = eos[0] if isinstance(eos, list) else (eos if eos is not None else 0)
    t0 = time.perf_counter()
    with decode_layout(model):
        out = model.generate(input_ids, **kwargs)
    return out[:, input_ids.shape[1]:], time.perf_counter() - t0
