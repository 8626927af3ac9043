"""Seeded batch order shared by every rank, and reading rows from numpy or Zarr arrays."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch


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


def take(array, rows: np.ndarray) -> np.ndarray:
    """array[rows] for numpy and Zarr arrays (Zarr needs orthogonal indexing for a row list)."""
    if isinstance(array, np.ndarray):
        return array[rows]
    return array.oindex[rows]


def to_tensor(rows: np.ndarray, device: torch.device, dtype=torch.float32) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(rows)).to(device=device, dtype=dtype)


def load_all(array, max_bytes: int) -> np.ndarray | object:
    """The whole array in memory when it fits in `max_bytes` (random row reads are then free)."""
    nbytes = int(np.prod(array.shape)) * np.dtype(array.dtype).itemsize
    return np.asarray(array[...]) if nbytes <= max_bytes else array
