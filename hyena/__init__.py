"""Scavenging Hyena: distil attention transformers into Hyena long-convolution students.

Library only: no DVC or Typer here. Modules:
    operator     the Hyena operator (implicit long filter, short conv, gating, FFT convolution)
    teachers     loading teachers and capturing their per-layer outputs (architecture adapters)
    student      the student model: the teacher with every attention replaced by Hyena
    data         tokenising and packing corpora
    store        the chunked Zarr activation store
    train        schedules, distillation and language-model trainers
    evaluate     perplexity and lm-eval zero-shot tasks, reports
    recurrence   Laughing Hyena: long filters distilled into modal state-space recurrences
"""

from hyena.operator import HyenaConfig, HyenaOperator

__all__ = ["HyenaConfig", "HyenaOperator"]
