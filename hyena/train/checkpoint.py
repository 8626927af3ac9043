"""Resumable training state, and what decides whether a checkpoint may be resumed.

A `DirCheckpoint` holds model + optimiser + step + run state in a directory and is resumed only
by the same computation: its fingerprint names the parts that computation was made of (config,
tokens, input model, code, output path). `code_version` and `model_hash` are the fingerprint's
parts for the code and an HF model directory; `checkpoint_dir` gives every output its own
directory, so two stages never share one.
"""

from __future__ import annotations

import errno
import hashlib
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn as nn
from safetensors.torch import load_model, save_model

from hyena.core.io import file_sha256

FULL_DISK = 1 << 20  # free bytes below which a failed checkpoint write is taken for a full disk


def digest(*parts) -> str:
    """A short hash of JSON-able parts (the key order of a dict does not matter)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def code_version(*roots: str | Path) -> str:
    """A hash of the source of the packages in directories `roots` (every .py file under each): a
    checkpoint written by other code is not resumed. Broader than the files a stage runs, so an
    unrelated edit also starts over; never narrower."""
    files = []
    for root in roots:
        root = Path(root).resolve()
        files += [(f"{root.name}/{f.relative_to(root)}", file_sha256(f)) for f in sorted(root.rglob("*.py"))]
    return digest(files)


def model_hash(directory: str | Path) -> str:
    """A hash of an HF model directory's content: its config and every safetensors file."""
    d = Path(directory)
    files = [d / "config.json", *sorted(d.glob("*.safetensors"))]
    return digest([(f.name, file_sha256(f)) for f in files if f.is_file()])


def checkpoint_dir(root: str | Path, stage: str, out: str | Path) -> Path:
    """Resumable state of `stage` writing `out`, under `root`: one directory per output, never shared."""
    return Path(root) / f"{stage}-{digest(str(Path(out).resolve()))[:12]}"


class DirCheckpoint:
    """Model + optimiser + step + run state in `directory`, resumed only by the same computation.

    `fingerprint` maps named parts (e.g. input model hash, config, tokens, code version) to
    strings. A checkpoint made with other parts is never resumed: `resumable()` says which parts
    differ, removes it and returns 0. `state` is saved with every checkpoint and restored by
    `resumable()` (the trainer keeps its validation loss before training and its metric log there).
    """

    def __init__(self, directory: str | Path, model: nn.Module, fingerprint: dict[str, str],
                 say: Callable[[str], None] = print):
        self.dir, self.model, self.fingerprint, self.say = Path(directory), model, dict(fingerprint), say
        self.state: dict = {}
        self._step: int | None = None  # decided once, on the first call of resumable()

    def _read(self) -> dict | None:
        try:
            return json.loads((self.dir / "state.json").read_text())
        except (OSError, ValueError):
            return None

    def resumable(self) -> int:
        """The step a valid checkpoint resumes from, with `state` restored; 0 (and no checkpoint
        left behind) when there is none or it belongs to another computation."""
        if self._step is None:
            self._step = self._inspect()
        return self._step

    def _inspect(self) -> int:
        old = self.dir.with_name(self.dir.name + ".old")
        if not self.dir.exists() and old.is_dir():
            old.rename(self.dir)  # killed between the two renames of `save`: the old one is complete
        saved = self._read()
        if saved is None:
            if self.dir.exists():
                shutil.rmtree(self.dir, ignore_errors=True)  # without its state file it is not usable
            return 0
        theirs = saved.get("fingerprint")
        if theirs != self.fingerprint:
            theirs = theirs if isinstance(theirs, dict) else {}
            changed = sorted(k for k in {*self.fingerprint, *theirs} if self.fingerprint.get(k) != theirs.get(k))
            self.say(f"not resuming the checkpoint in {self.dir} (step {saved.get('step')}): it was made with "
                     f"another {', '.join(changed)}; starting over")
            shutil.rmtree(self.dir, ignore_errors=True)
            return 0
        self.state = saved.get("state", {})
        return int(saved["step"])

    def save(self, opt: torch.optim.Optimizer, step: int) -> None:
        tmp = self.dir.with_name(self.dir.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        try:
            save_model(self.model, str(tmp / "model.safetensors"))
            torch.save(opt.state_dict(), tmp / "optimizer.pt")
            (tmp / "state.json").write_text(json.dumps({"step": step, "fingerprint": self.fingerprint,
                                                        "state": self.state}))
        except Exception as err:
            # safetensors names ENOSPC; torch.save says only "unexpected pos": look at the disk
            full = "No space left on device" in str(err) or shutil.disk_usage(tmp).free < FULL_DISK
            shutil.rmtree(tmp, ignore_errors=True)
            if full:
                raise OSError(errno.ENOSPC, "No space left on device", str(self.dir)) from err
            raise
        if self.dir.exists():
            old = self.dir.with_name(self.dir.name + ".old")
            shutil.rmtree(old, ignore_errors=True)
            self.dir.rename(old)
            tmp.rename(self.dir)
            shutil.rmtree(old)
        else:
            tmp.rename(self.dir)

    def load(self, opt: torch.optim.Optimizer) -> int:
        start = self.resumable()
        if start:
            load_model(self.model, str(self.dir / "model.safetensors"))
            opt.load_state_dict(torch.load(self.dir / "optimizer.pt", weights_only=True))
        return start
