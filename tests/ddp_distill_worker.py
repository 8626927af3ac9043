"""Worker for test_distributed.py: distil a tiny Hyena block on fixed data, save the result.

Run directly (one process) or under torchrun; the global batch is the same either way.
"""

import sys

import numpy as np
import torch
import torch.nn as nn
from safetensors.torch import save_file

from hyena.core.dist import setup, teardown
from hyena.model.operator import HyenaConfig, HyenaOperator
from hyena.train.distill import DistillConfig, distill_layer, trainable_fn


class Block(nn.Module):
    def __init__(self, d: int):
        super().__init__()
        self.mixer = HyenaOperator(d, HyenaConfig(max_len=64, filter_order=16))
        self.mlp = nn.Sequential(nn.Linear(d, 2 * d), nn.GELU(), nn.Linear(2 * d, d))

    def forward(self, h):
        h = h + self.mixer(h)
        return h + self.mlp(h)


def main(out: str) -> None:
    torch.set_num_threads(1)
    env = setup(device="cpu")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((16, 32, 16)).astype(np.float32)
    y = np.tanh(np.cumsum(x, axis=1) / 4).astype(np.float32)
    torch.manual_seed(0)
    block = Block(16)
    if env.is_main:
        save_file({k: v.clone().contiguous() for k, v in block.state_dict().items()}, out + ".init")
    cfg = DistillConfig(lr=3e-3, batch_size=4, epochs=2, train="layer", grad_clip=0.0)
    res = distill_layer(trainable_fn(block, block.mixer, None, cfg), x[:12], y[:12], x[12:], y[12:], cfg, env)
    if env.is_main:
        save_file({k: v.contiguous() for k, v in block.state_dict().items()}, out)
        print(f"val_mse {res['val_mse_before']:.6f} -> {res['val_mse']:.6f}")
    teardown(env)


if __name__ == "__main__":
    main(sys.argv[1])
