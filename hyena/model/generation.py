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
import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from hyena.model.decode_step import pack_gate_up, unpack_gate_up


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
    and up projections become two views of one such array (`hyena.model.decode_step.pack_gate_up`), which
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
    """"recurrent" | "student" | "transformer", by the model's `model_type` (no import of the
    student classes, so this module serves every kind)."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    return {"hyena_recurrent_student": "recurrent", "hyena_student": "student"}.get(model_type, "transformer")


@torch.no_grad()
def generate(model, input_ids: torch.Tensor, max_new_tokens: int, sampling: Sampling,
             attention_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, float]:
    """HF generate() with the cache of the model's kind, in `decode_layout`; returns (new token
    ids (B, T), seconds, the layout changes included). `attention_mask` (B, L): 0 at left pads."""
    mask = attention_mask if attention_mask is not None else torch.ones_like(input_ids)
    kwargs = {"max_new_tokens": max_new_tokens, "attention_mask": mask, "use_cache": True}
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


def read_prompts(path) -> list[str]:
    """Prompts from a text file, one per line (blank lines skipped), or from a .jsonl file of
    objects with a "prompt" field (or bare JSON strings)."""
    path = Path(path)
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if path.suffix != ".jsonl":
        return lines
    prompts = []
    for n, line in enumerate(lines, 1):
        item = json.loads(line)
        if isinstance(item, dict) and isinstance(item.get("prompt"), str):
            prompts.append(item["prompt"])
        elif isinstance(item, str):
            prompts.append(item)
        else:
            raise ValueError(f"{path}:{n}: expected a JSON string or an object with a \"prompt\" string")
    return prompts


def left_pad(prompts: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token lists -> (input_ids, attention_mask), both (B, longest), pads on the left as
    generate() expects (every model's cache then continues from the same last column)."""
    L = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), L), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for b, p in enumerate(prompts):
        if not p:
            raise ValueError(f"prompt {b} has no tokens")
        ids[b, L - len(p):] = torch.tensor(p, dtype=torch.long)
        mask[b, L - len(p):] = 1
    return ids, mask


def _eos_ids(model) -> set[int]:
    eos = model.generation_config.eos_token_id
    return set(eos if isinstance(eos, list) else ([] if eos is None else [eos]))


@torch.no_grad()
def generate_batch(model, prompts: list[list[int]], max_new_tokens: int, sampling: Sampling) -> tuple[list[list[int]], float]:
    """One left-padded batch through `generate` (each row stops at its own EOS): per prompt its
    new tokens up to and including the first EOS, and the batch's seconds."""
    eos = _eos_ids(model)
    pad = model.generation_config.pad_token_id
    pad = pad if pad is not None else (min(eos) if eos else 0)
    ids, mask = left_pad(prompts, pad)
    new, seconds = generate(model, ids, max_new_tokens, sampling, attention_mask=mask)
    rows = []
    for row in new.tolist():
        cut = next((i + 1 for i, t in enumerate(row) if t in eos), len(row))
        rows.append(row[:cut])
    return rows, seconds
