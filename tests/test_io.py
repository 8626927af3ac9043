"""Atomic outputs owned by their stage: a stage replaces only its own earlier output, a kill at
any moment leaves the complete old output or the complete new one (never a mix, never nothing
once the next run has claimed the path), and what killed runs left behind is cleared."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from conftest import ROOT

from hyena.core.io import MARKER, OutputConflictError, atomic_dir, claim_output, output_owner


def write_version(directory: Path, version: str, n: int = 3) -> None:
    for i in range(n):
        (directory / f"part_{i:04d}").write_text(version)


def versions(directory: Path) -> set[str]:
    return {f.read_text() for f in directory.glob("part_*")}


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_an_output_is_marked_and_replaced_only_by_its_own_stage(tmp_path):
    out = tmp_path / "out"
    with atomic_dir(out, "finetune") as tmp:
        write_version(tmp, "a")
    assert output_owner(out) == "finetune" and versions(out) == {"a"}
    with atomic_dir(out, "finetune") as tmp:
        write_version(tmp, "b")
    assert versions(out) == {"b"}
    with pytest.raises(OutputConflictError, match="it is an output of stage finetune"):
        claim_output(out, "pretrain")
    assert versions(out) == {"b"}

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    with pytest.raises(OutputConflictError, match=f"not an output of stage teacher \\(no {MARKER} marker\\)"):
        with atomic_dir(mine, "teacher") as tmp:
            pass
    assert (mine / "notes.txt").read_text() == "keep me" and sorted(p.name for p in tmp_path.iterdir()) == ["mine", "out"]

    (tmp_path / "empty").mkdir()  # an empty directory holds nothing to lose
    with atomic_dir(tmp_path / "empty", "teacher") as tmp:
        write_version(tmp, "c")
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputConflictError, match="it is a file"):
        claim_output(tmp_path / "file", "teacher")


def test_a_failure_inside_the_block_keeps_the_old_output(tmp_path):
    out = tmp_path / "out"
    with atomic_dir(out, "distill") as tmp:
        write_version(tmp, "old")
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_dir(out, "distill") as tmp:
            write_version(tmp, "new")
            raise RuntimeError("boom")
    assert versions(out) == {"old"} and sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_leftovers_of_dead_processes_are_cleared_and_a_half_replaced_output_restored(tmp_path):
    out = tmp_path / "out"
    with atomic_dir(out, "distill") as tmp:
        write_version(tmp, "old")
    dead = dead_pid()
    stale = tmp_path / f".out.tmp-{dead}"
    stale.mkdir()
    live = tmp_path / f".out.tmp-{os.getppid()}"  # a process still running: not ours to remove
    live.mkdir()
    claim_output(out, "distill")
    assert not stale.exists() and live.exists()
    live.rmdir()

    os.replace(out, tmp_path / f".out.old-{dead}")  # killed between the two renames of a replacement
    (tmp_path / f".out.tmp-{dead}").mkdir()
    claim_output(out, "distill")
    assert versions(out) == {"old"} and sorted(p.name for p in tmp_path.iterdir()) == ["out"]


CHILD = textwrap.dedent("""
    import sys
    from pathlib import Path
    from hyena.core.io import atomic_dir
    out, version, n = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    print("ready", flush=True)
    while True:  # replace the output again and again until killed
        with atomic_dir(out, "distill") as tmp:
            for i in range(n):
                (tmp / f"part_{i:04d}").write_text(version)
""")


def test_sigkill_at_random_moments_leaves_one_complete_version(tmp_path):
    """A real `kill -9` while a stage keeps replacing its output: after the next run claims the
    path, it holds every file of exactly one version."""
    out = tmp_path / "out"
    n = 400
    with atomic_dir(out, "distill") as tmp:
        write_version(tmp, "v0", n)
    rng = random.Random(0)
    for trial in range(6):
        proc = subprocess.Popen([sys.executable, "-c", CHILD, str(out), f"v{trial + 1}", str(n)], cwd=ROOT,
                                env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(rng.uniform(0.05, 0.4))
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        claim_output(out, "distill")
        assert len(list(out.glob("part_*"))) == n and len(versions(out)) == 1, trial
        assert sorted(p.name for p in tmp_path.iterdir()) == ["out"], trial
