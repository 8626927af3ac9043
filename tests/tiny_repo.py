"""Helpers for tests that drive `dvc` on their own fresh tiny project (the session's shared run is
`conftest.tiny_repo`): the project copy is conftest's `fresh_project`; `run` may return a failed
command for the test to inspect."""

from __future__ import annotations

import subprocess
from pathlib import Path

from conftest import DVC_ENV, GIT, fresh_project, sh


def run(args, cwd, timeout=900, check=True) -> subprocess.CompletedProcess:
    proc = subprocess.run(args, cwd=cwd, env=DVC_ENV, capture_output=True, text=True, timeout=timeout)
    if check:
        assert proc.returncode == 0, f"{' '.join(map(str, args))} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def make_tiny_repo(top: Path) -> Path:
    """`top`/repo on the tiny preset, committed, with `top`/shared linked to ../shared."""
    return fresh_project(top)


def commit(repo: Path, message: str) -> None:
    sh([*GIT, "add", "-A"], repo)
    sh([*GIT, "commit", "-qm", message, "--allow-empty"], repo)
