"""The supported teacher families, by HF `model_type`. Adding one is a module beside `neox.py`
with its `TeacherAdapter` and, for `student.init: teacher_attention`, a function reading its
attention's Q/K/V/O at full width, registered here."""

from __future__ import annotations

import torch.nn as nn

from hyena.teachers import gpt2, llama, neox
from hyena.teachers.adapter import AttentionProjections, TeacherAdapter

ADAPTERS: dict[str, TeacherAdapter] = {"gpt_neox": neox.ADAPTER, **llama.ADAPTERS, "gpt2": gpt2.ADAPTER}

_PROJECTIONS = {
    "gpt_neox": neox.projections,
    "llama": llama.projections,
    "mistral": llama.projections,
    "qwen2": llama.projections,  # Llama's, with Q/K/V biases
    "qwen3": llama.qwen3_projections,
    "gpt2": gpt2.projections,
}


def get_adapter(model_or_config) -> TeacherAdapter:
    """The adapter for a model or config; a clear error for unsupported architectures."""
    config = getattr(model_or_config, "config", model_or_config)
    model_type = getattr(config, "model_type", None)
    if model_type not in ADAPTERS:
        raise ValueError(
            f"unsupported teacher architecture {model_type!r}; supported: {', '.join(sorted(ADAPTERS))} "
            "(add a TeacherAdapter in hyena/teachers/ for another family)"
        )
    return ADAPTERS[model_type]


def attention_projections(attention: nn.Module, config) -> AttentionProjections:
    """The Q/K/V/O projections of one teacher attention block, at full width (see the class)."""
    return _PROJECTIONS[get_adapter(config).family](attention, config)
