"""A fresh git + DVC copy of the project on the `tiny` preset, for tests that drive `dvc` itself
(the same copy tests/test_pipeline_e2e.py makes; kept apart so that each test module builds its own)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from conftest import ROOT, SHARED

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "DVC_NO_ANALYTICS": "1",
       "OMP_NUM_THREADS": "2", "PYTHONPATH": ""}


def run(args, cwd, timeout=900, check=True) -> subprocess.CompletedProcess:
    proc = subprocess.run(args, cwd=cwd, env=ENV, capture_output=True, text=True, timeout=timeout)
    if check:
        assert proc.returncode == 0, f"{' '.join(map(str, args))} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def make_tiny_repo(top: Path) -> Path:
    """`top`/repo: the project's tracked and untracked files (not data/, reports/, dvc.lock), the
    tiny preset applied, committed in a new git repository; `top`/shared links to ../shared."""
    (top / "shared").symlink_to(SHARED.resolve())
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True,
                           text=True, check=True).stdout.split()
    dst = top / "repo"
    for rel in files:
        if rel.startswith(("data/", "reports/")) or rel == "dvc.lock" or not (ROOT / rel).is_file():
            continue
        (dst / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, dst / rel)
    run(["python", "-m", "pipeline.preset", "tiny"], dst)
    run(["git", "init", "-q"], dst)
    commit(dst, "tiny")
    return dst


def commit(repo: Path, message: str) -> None:
    run(["git", "-c", "user.email=t@t", "-c", "user.name=t", "add", "-A"], repo)
    run(["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", message, "--allow-empty"], repo)
