"""One writer per output: a stage holds an exclusive lock on each output it owns for its whole run.
A second writer (a real second process) fails at once with one line naming the holder's pid, and
writes nothing; once the holder is dead (kill -9), its lock is taken over."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import ROOT

HOLD = """
import sys, time
from hyena.core.io import hold_output
hold_output(sys.argv[1], sys.argv[2])  # what a stage's claim of its output takes first
print("held", flush=True)
time.sleep(600)
"""


def tree(path: Path) -> dict[str, bytes]:
    return {str(f.relative_to(path)): f.read_bytes() for f in sorted(path.rglob("*")) if f.is_file()}


def stage(params: Path, name: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", f"pipeline.{name}", "--params", str(params)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("output", ["students/finetuned", "reports/dvclive/finetune"])
def test_a_second_writer_fails_at_once_naming_the_holder_and_a_dead_holders_lock_is_taken_over(
        small_project, tmp_path, output):
    params = yaml.safe_load((small_project / "params.yaml").read_text())
    for key in ("students", "reports", "checkpoints"):
        src = Path(params["paths"][key])
        if src.exists():
            shutil.copytree(src, tmp_path / key)
        params["paths"][key] = str(tmp_path / key)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    held = tmp_path / output
    before = tree(tmp_path / "students") | tree(tmp_path / "reports")

    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(held), "finetune"], cwd=ROOT, stdout=subprocess.PIPE,
                              text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert holder.stdout.readline().strip() == "held"
        second = stage(tmp_path / "params.yaml", "finetune")
        assert second.returncode == 1
        lines = [line for line in second.stderr.splitlines() if "error" in line.lower()]  # not progress bars
        assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in second.stderr, second.stderr
        assert f"pid {holder.pid}" in lines[0] and str(held) in lines[0]
        assert tree(tmp_path / "students") | tree(tmp_path / "reports") == before  # it wrote nothing
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    # the dead holder's lock is taken over: at once by what a stage takes first, for every output ...
    from hyena.core.io import hold_output, release_outputs

    try:
        assert hold_output(held, "finetune")
    finally:
        release_outputs()
    if output != "students/finetuned":
        return
    # ... and by a whole rerun of the stage (the same lock code for every output: one rerun shows it)
    start = time.monotonic()
    again = stage(tmp_path / "params.yaml", "finetune")
    assert again.returncode == 0, again.stderr[-2000:]
    assert time.monotonic() - start < 300
