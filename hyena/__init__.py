"""Scavenging Hyena: distil attention transformers into Hyena long-convolution students.

Library only: no DVC or Typer here. Modules (imported on demand; this file imports none of them,
so a pipeline stage's code dependencies are exactly the modules it uses):
    config       typed params sections: defaults, help, checks, commented YAML
    operator     the Hyena operator (implicit long filter, short conv, gating, FFT convolution)
    teachers     loading teachers and capturing their per-layer outputs (architecture adapters)
    student      the student model: the teacher with every attention replaced by Hyena
    data         tokenising and packing corpora
    store        the chunked Zarr activation store
    train        the shared training loop, layer distillation and language-model trainers
    evaluate     perplexity and lm-eval zero-shot tasks, reports
    recurrence   Laughing Hyena: long filters distilled into modal state-space recurrences
"""
