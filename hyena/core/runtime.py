"""Small runtime helpers every part of the library shares: device choice and layer outputs."""

from __future__ import annotations

import torch


def resolve_device(name: str = "auto") -> torch.device:
    """"auto" -> cuda when available, else cpu; an explicit "cuda" without a GPU is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {name!r} asked for, but no CUDA device is available: use auto or cpu")
    return device


def first_output(out):
    """A decoder layer's hidden states whether it returns a tensor or a (hidden, ...) tuple."""
    return out[0] if isinstance(out, tuple) else out
