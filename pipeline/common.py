"""What every stage script shares: reading a typed params section, and turning errors into one line."""

from __future__ import annotations

import dataclasses
import functools
import sys
from pathlib import Path
from typing import Any, TypeVar

import typer
import yaml

T = TypeVar("T")

PARAMS = Path("params.yaml")


class StageError(Exception):
    """A user-facing problem: printed as one line, exit code 1."""


def load_params(path: Path = PARAMS) -> dict[str, Any]:
    if not Path(path).is_file():
        raise StageError(f"params file not found: {path} (run from the project root or pass --params)")
    with open(path) as f:
        return yaml.safe_load(f) or {}


def section(params: dict[str, Any], name: str, cls: type[T]) -> T:
    """params[name] as the dataclass `cls`; unknown keys are an error naming the key."""
    raw = params.get(name)
    if raw is None:
        raise StageError(f"params.yaml has no '{name}' section")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise StageError(f"unknown key(s) in params '{name}': {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    try:
        return cls(**raw)
    except (TypeError, ValueError) as err:
        raise StageError(f"bad params '{name}': {err}") from err


def one_line_errors(fn):
    """Decorator for stage commands: expected errors become `error: ...` on stderr and exit 1."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (StageError, FileNotFoundError, ValueError, RuntimeError, KeyError) as err:
            msg = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            typer.echo(f"error: {msg}", err=True)
            sys.exit(1)

    return wrapper


@dataclasses.dataclass
class TeacherParams:
    source: str  # hub id, local directory or .gguf file
    random_init: bool = False  # the teacher's architecture with seeded random weights (no weights offline)
    seed: int = 0  # seed for random_init, so every stage builds the same random teacher


def load_teacher_from(params: dict[str, Any]):
    """The teacher named in params (eval mode, frozen), identical in every stage."""
    import torch

    from hyena.teachers import load_teacher

    t = section(params, "teacher", TeacherParams)
    torch.manual_seed(t.seed)
    return load_teacher(t.source, config_only=t.random_init)


def dvclive_logger(directory: str | Path):
    """A `log(metrics, step)` callback writing DVCLive plots under `directory` (no DVC experiment)."""
    from dvclive import Live

    live = Live(str(directory), save_dvc_exp=False, dvcyaml=None)

    def log(metrics: dict[str, float], step: int) -> None:
        live.step = step
        for name, value in metrics.items():
            live.log_metric(name, value)

    log.live = live
    return log


def write_metrics(path: str | Path, metrics: dict[str, Any]) -> None:
    """A DVC metrics file (JSON), written atomically."""
    from hyena.io import atomic_write_json

    atomic_write_json(path, metrics)
