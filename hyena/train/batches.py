"""Seeded batch order shared by every rank, and reading rows from numpy or Zarr arrays."""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import torch

VAL_BATCH = 8  # validation sequences per forward of a layer-MSE measurement (distill, assemble)
LM_VAL_BATCH = 4  # validation sequences per forward of a language-model loss (its logits are vocabulary-wide)


def epoch_batches(n: int, batch_size: int, epochs: int, seed: int) -> Iterator[np.ndarray]:
    """Global batches of row indices: a fresh seeded permutation per epoch, last partial batch dropped.

    Indices inside a batch are sorted: contiguous reads are cheaper and every rank slices the
    same rows whatever the world size.
    """
    if n < batch_size:
        raise ValueError(f"batch_size {batch_size} is larger than the {n} training sequences; "
                         "lower the batch size or dump more sequences")
    for epoch in range(epochs):
        perm = np.random.default_rng(seed + epoch).permutation(n)
        for b in range(n // batch_size):
            yield np.sort(perm[b * batch_size:(b + 1) * batch_size])


def steps_per_run(n: int, batch_size: int, epochs: int) -> int:
    return (n // batch_size) * epochs


def steps_for_epochs(n_sequences: int, batch_size: int, epochs: float, section: str) -> int:
    """Optimiser steps of `epochs` (fractional) passes over n_sequences in batches of batch_size, at
    least one; a clear error naming params section `section` when one batch does not fit."""
    if n_sequences < batch_size:
        raise ValueError(f"{section}.batch_size {batch_size} exceeds the {n_sequences} training sequences: "
                         "lower it, or tokenize more documents")
    return max(1, math.ceil(epochs * (n_sequences // batch_size)))


def take(array, rows: np.ndarray) -> np.ndarray:
    """array[rows] for numpy and Zarr arrays (Zarr needs orthogonal indexing for a row list) and for
    objects that make their rows on demand (a `take_rows(rows)` method)."""
    if isinstance(array, np.ndarray):
        return array[rows]
    if hasattr(array, "take_rows"):
        return array.take_rows(rows)
    return array.oindex[rows]


def to_tensor(rows: np.ndarray, device: torch.device, dtype=torch.float32) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(rows)).to(device=device, dtype=dtype)


def load_all(array, max_bytes: int) -> np.ndarray | object:
    """The whole array in memory when it fits in `max_bytes` (random row reads are then free);
    rows made on demand (`take_rows`) are made once here when they fit."""
    if hasattr(array, "take_rows"):
        n = array.shape[0]
        if int(np.prod(array.shape)) * np.dtype(array.dtype).itemsize > max_bytes:
            return array
        return np.concatenate([array.take_rows(np.arange(a, min(a + 16, n))) for a in range(0, n, 16)])
    nbytes = int(np.prod(array.shape)) * np.dtype(array.dtype).itemsize
    return np.asarray(array[...]) if nbytes <= max_bytes else array
