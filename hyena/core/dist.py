"""Data-parallel plumbing: one process or `torchrun --nproc_per_node=K` (gloo on CPU, NCCL on GPU).

Every rank sees the same seeded permutation of the data and takes its slice of each global
batch, so a run with K processes and global batch B follows the same trajectory as one process
with batch B (up to float summation order).
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch
import torch.distributed as tdist

from hyena.core.runtime import resolve_device


@dataclass
class DistEnv:
    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")
    amp_dtype: torch.dtype | None = None  # bf16 autocast on GPUs that support it

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def local_slice(self, global_batch: int) -> slice:
        """This rank's part of a global batch (the global batch must divide evenly)."""
        if global_batch % self.world_size:
            raise ValueError(f"batch_size {global_batch} is not divisible by the {self.world_size} processes; "
                             "choose a batch size that is a multiple of --nproc_per_node")
        per = global_batch // self.world_size
        return slice(self.rank * per, (self.rank + 1) * per)

    def autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def mean(self, value: float) -> float:
        """Average a python float over ranks."""
        if not self.distributed:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=self.device)
        tdist.all_reduce(t)
        return (t / self.world_size).item()

    def barrier(self) -> None:
        if self.distributed:
            tdist.barrier()


def setup(device: str = "auto", precision: str = "auto") -> DistEnv:
    """Read torchrun's environment (if any), pick the device and initialise the process group.

    precision: "auto" (bf16 autocast on a GPU that supports it, else fp32), "fp32" or "bf16"."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device)
    if dev.type == "cuda":
        dev = torch.device("cuda", local)
        torch.cuda.set_device(dev)
    if world > 1 and not tdist.is_initialized():
        tdist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    bf16 = precision == "bf16" or (precision == "auto" and dev.type == "cuda" and torch.cuda.is_bf16_supported())
    amp_dtype = torch.bfloat16 if bf16 else None  # the Hyena FFT still runs in fp32 (operator.fft_dtype)
    return DistEnv(rank=rank, world_size=world, device=dev, amp_dtype=amp_dtype)


def teardown(env: DistEnv) -> None:
    if env.distributed and tdist.is_initialized():
        tdist.destroy_process_group()


def wrap(module: torch.nn.Module, env: DistEnv) -> torch.nn.Module:
    """DistributedDataParallel when running under torchrun, the module itself otherwise."""
    module.to(env.device)
    if not env.distributed:
        return module
    ids = [env.device.index] if env.device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(module, device_ids=ids)
