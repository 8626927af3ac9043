"""The GPU check script: one line and exit 0 without CUDA; its whole plumbing on CPU (--cpu-smoke)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import ROOT, SHARED

SCRIPT = ROOT / "benchmarks" / "gpu_check.py"
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "DVC_NO_ANALYTICS": "1", "OMP_NUM_THREADS": "2"}


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA: the check would run for real")
def test_without_cuda_it_says_so_and_exits_0():
    proc = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, env=ENV, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1 and "no CUDA device" in lines[0]


@pytest.mark.slow  # every section on CPU, the tiny preset's stages included: 27 CPU-s
def test_cpu_smoke_runs_every_section(tmp_path):
    proc = subprocess.run([sys.executable, str(SCRIPT), "--cpu-smoke", "--out", str(tmp_path), "--shared", str(SHARED)],
                          capture_output=True, text=True, env=ENV, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((tmp_path / "gpu_check.json").read_text())
    assert list(results) == ["environment", "mixer", "decode", "batch", "distill", "tiny_preset"]
    for name, r in results.items():
        assert "error" not in r and "skipped" not in r, (name, r)
    assert {"attention", "hyena"} <= set(results["mixer"]["rows"][0])
    assert {row["model"] for row in results["decode"]["rows"]} == {"teacher", "student", "recurrent"}
    assert {(row["model"], row["batch"]) for row in results["batch"]["rows"] if row.get("tok_s", 0) > 0} == \
        {(m, b) for m in ("teacher", "recurrent", "hybrid") for b in (1, 4)}
    assert results["distill"]["distill_tokens_per_s"] > 0 and results["distill"]["finetune_tokens_per_s"] > 0
    assert results["tiny_preset"]["ok"], results["tiny_preset"]
    assert "## mixer" in (tmp_path / "gpu_check.md").read_text()


def test_missing_shared_data_is_a_clear_skip(tmp_path):
    proc = subprocess.run([sys.executable, str(SCRIPT), "--cpu-smoke", "--out", str(tmp_path), "--shared",
                           str(tmp_path / "nowhere"), "--sections", "tiny_preset"],
                          capture_output=True, text=True, env=ENV, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    skipped = json.loads((tmp_path / "gpu_check.json").read_text())["tiny_preset"]["skipped"]
    assert "pythia-70m" in skipped and "--shared" in skipped
