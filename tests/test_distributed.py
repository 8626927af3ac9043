"""Data-parallel distillation under torchrun (2 CPU processes, gloo) equals one process."""

import os
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

WORKER = Path(__file__).with_name("ddp_distill_worker.py")


def _run(args, out, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(WORKER.parents[1])}
    for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    proc = subprocess.run([sys.executable, *args, str(WORKER), str(out)], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return load_file(str(out))


def test_torchrun_two_processes_matches_single_process(tmp_path):
    single = _run([], tmp_path / "single.safetensors", tmp_path)
    ddp = _run(["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"],
               tmp_path / "ddp.safetensors", tmp_path)
    init = load_file(str(tmp_path / "single.safetensors.init"))
    assert single.keys() == ddp.keys() == init.keys()
    moved = [name for name in single if not torch.allclose(single[name], init[name], atol=1e-4)]
    assert len(moved) > len(single) // 2, "training barely changed the block: the comparison would be vacuous"
    for name in single:
        torch.testing.assert_close(ddp[name], single[name], rtol=1e-4, atol=1e-5, msg=name)
