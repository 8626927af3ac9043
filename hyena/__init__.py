"""Scavenging Hyena: distil attention transformers into Hyena long-convolution students.

Library only: no DVC or Typer here. Packages (imported on demand; this file imports none of them,
so a pipeline stage's code dependencies are the packages it uses, as directories in dvc.yaml):
    core         typed params configs, atomic outputs and digests, device/precision, distributed runs
    teachers     loading teachers and capturing their per-layer outputs (one adapter per family)
    data         tokenising and packing corpora; the chunked Zarr activation store and its dump
    model        the Hyena operator; the student (HF model, building it from a teacher); generation
    train        the shared training loop, layer distillation and language-model trainers
    recurrence   Laughing Hyena: long filters distilled into modal state-space recurrences
    evaluate     perplexity and lm-eval zero-shot tasks, reports
"""
