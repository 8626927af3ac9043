"""Content digests of the activation store: damaged bytes that still decode to finite numbers are
caught when the dump resumes (and rewritten), when a stage reads the store, and by `inspect --verify`."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml
from conftest import run_stage
from tiny_repo import run


def zero_bytes(path: Path, start: int = 1000, n: int = 4000) -> None:
    """Zero `n` bytes of `path` from `start` (float16 zeros: finite, so only a digest can tell)."""
    data = bytearray(path.read_bytes())
    assert len(data) >= start + n and any(data[start : start + n])
    data[start : start + n] = bytes(n)
    path.write_bytes(bytes(data))


def chunk(store: Path, array: str, index: int) -> Path:
    return store / array / "c" / str(index) / "0" / "0"


@pytest.mark.slow
def test_dvc_repro_rewrites_a_damaged_activation_chunk(tiny_copy):
    """The issue's case 1 through DVC: zero 4,000 bytes inside a finished chunk and `dvc repro`. The
    resumed dump must find the chunk by its digest and write it again, so that the store comes back
    byte-identical and DVC records the hash it had (nothing downstream would be built on it)."""
    repo = tiny_copy
    lock = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]["dump-activations"]["outs"][0]["md5"]
    victim = chunk(repo / "data/activations.zarr", "train/layer_03", 2)
    original = victim.read_bytes()
    zero_bytes(victim)

    out = run(["dvc", "repro", "dump-activations"], repo)
    assert "does not match its recorded digest" in out.stdout + out.stderr
    assert victim.read_bytes() == original
    assert yaml.safe_load((repo / "dvc.lock").read_text())["stages"]["dump-activations"]["outs"][0]["md5"] == lock


def test_a_stage_reading_a_damaged_chunk_stops_with_one_line(small_project, tmp_path):
    params = yaml.safe_load((small_project / "params.yaml").read_text())
    store = tmp_path / "activations.zarr"
    shutil.copytree(params["paths"]["activations"], store)
    params["paths"]["activations"] = str(store)
    params["paths"]["students"] = str(tmp_path / "students")
    shutil.copytree(small_project / "data/students", tmp_path / "students")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    zero_bytes(chunk(store, "train/layer_01", 1), 100, 400)

    result = run_stage(tmp_path / "params.yaml", "distill", "--layer", "01")
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("error: ") and "train/layer_01/c/1/0/0" in lines[-1]
    assert "digest" in lines[-1] and "rerun the dump-activations stage" in lines[-1]


def test_inspect_verify_names_a_chunk_that_no_longer_matches_its_digest(small_project, tmp_path):
    from typer.testing import CliRunner

    from tools.inspect_store import app

    store = tmp_path / "activations.zarr"
    shutil.copytree(small_project / "data/activations.zarr", store)
    assert CliRunner().invoke(app, [str(store), "--verify", "--no-stats"]).exit_code == 0
    zero_bytes(chunk(store, "val/layer_02", 0), 100, 400)
    bad = CliRunner().invoke(app, [str(store), "--verify", "--no-stats"])
    assert bad.exit_code == 1 and "digest mismatch (damaged on disk) in val/layer_02 chunk 0" in bad.stderr
