"""What every stage script shares: params.yaml, its typed sections, the artifact paths, one-line errors.

Each params.yaml section is a dataclass owned by the library module that uses it (`SECTIONS`
names them); a stage reads only its own sections with `section(raw, name, cls)`. The `paths`
section, owned here, is the one home of every artifact path: stages read it, and dvc.yaml uses
the same values through `${paths.*}`.
"""

from __future__ import annotations

import errno
import functools
import importlib
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import typer
import yaml

from hyena.core.config import Config, ConfigError, as_dict, did_you_mean, load, param
from hyena.core.io import atomic_write_json, hold_output, release_outputs

T = TypeVar("T")

PARAMS = Path("params.yaml")

# section -> "module:Class" of the library config that owns it (imported only when needed)
SECTIONS = {
    "paths": "pipeline.params:PathsConfig",
    "teacher": "hyena.teachers:TeacherConfig",
    "tokenize": "hyena.data.corpus:TokenizeConfig",
    "dump": "hyena.data.dump:DumpConfig",
    "student": "hyena.model.build:StudentConfig",
    "distill": "hyena.train.distill:DistillConfig",
    "finetune": "hyena.train.lm:FinetuneConfig",
    "pretrain": "hyena.train.lm:PretrainConfig",
    "recurrent": "hyena.recurrence.model:RecurrentConfig",
    "eval": "hyena.evaluate.config:EvalConfig",
}


PIPELINE_MODELS = ("pretrained", "distilled", "finetuned", "recurrent")  # students the pipeline writes


class StageError(Exception):
    """A user-facing problem: printed as one line, exit code 1."""


@dataclass
class PathsConfig(Config):
    """params.yaml `paths`: where every artifact lives (dvc.yaml reads the same values)."""

    SECTION = "paths"

    teacher: str = param("data/teacher", "the teacher as a local HF directory (teacher stage)")
    tokens: str = param("data/tokens", "packed token rows + manifest (tokenize)")
    activations: str = param("data/activations.zarr", "teacher layer outputs, one Zarr array per layer (dump-activations)")
    students: str = param("data/students", "students: layer_XX (distill chain), distilled, finetuned, pretrained, recurrent")
    checkpoints: str = param("data/checkpoints", "resumable training state of finetune and pretrain, one directory per output")
    eval: str = param("data/eval", "evaluation report, metrics and plots")
    reports: str = param("reports", "metrics, plots, timings and DVCLive curves (tracked in git)")

    @property
    def check(self) -> Path:
        """The check-params stage's record (dvc.yaml: the first stage's dep, so it runs first)."""
        return Path(self.reports) / "params_check.json"

    def student(self, name: str) -> Path:
        return Path(self.students) / name

    def layer(self, key: str) -> Path:
        """The distill chain's directory of layer `key` ("00": the undistilled student)."""
        return self.student(f"layer_{key}")

    def metrics(self, name: str) -> Path:
        return Path(self.reports) / "metrics" / f"{name}.json"

    def timing(self, name: str) -> Path:
        """Wall-clock figures of a stage: kept apart so that cached metrics stay byte-identical."""
        return Path(self.reports) / "timings" / f"{name}.json"

    def plot(self, name: str) -> Path:
        return Path(self.reports) / "plots" / f"{name}.png"

    def dvclive(self, name: str) -> Path:
        return Path(self.reports) / "dvclive" / name

    def model_source(self, spec: str) -> str:
        """A model named in params or on the command line -> a loadable source: `teacher` and the
        pipeline's own students resolve to their paths; anything else is a path or hub id."""
        if spec == "teacher":
            return self.teacher
        if spec in PIPELINE_MODELS:
            return str(self.student(spec))
        return spec


def load_params(path: Path = PARAMS) -> dict[str, Any]:
    """params.yaml as a mapping of sections; one-line errors for a missing or malformed file."""
    path = Path(path)
    if not path.is_file():
        raise StageError(f"params file not found: {path} (run from the project root or pass --params)")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise StageError(f"{path} is not valid YAML{where}: {getattr(err, 'problem', None) or err}") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise StageError(f"{path} must be a mapping of sections (teacher:, tokenize:, ...), got a {type(raw).__name__}")
    unknown = sorted(set(raw) - set(SECTIONS), key=str)
    if unknown:
        raise StageError(f"{path}: unknown section(s) {', '.join(map(str, unknown))}{did_you_mean(unknown, SECTIONS)}; "
                         f"known: {', '.join(SECTIONS)}")
    return raw


def section(raw: dict[str, Any], name: str, cls: type[T]) -> T:
    """params[name] as the checked dataclass `cls` (a missing section means all defaults)."""
    try:
        return load(cls, raw.get(name), name)
    except ConfigError as err:
        raise StageError(str(err)) from None


def paths(raw: dict[str, Any]) -> PathsConfig:
    return section(raw, "paths", PathsConfig)


class Params:
    """A read params.yaml: `.paths`, and `.get(section, cls)` for any other section."""

    def __init__(self, raw: dict[str, Any]):
        self.raw = raw
        self.paths = paths(raw)

    @classmethod
    def read(cls, path: Path = PARAMS) -> Params:
        return cls(load_params(path))

    def get(self, name: str, cls: type[T]) -> T:
        return section(self.raw, name, cls)

    def teacher_dir(self) -> Path:
        return teacher_dir(self.paths)

    def recipe(self, *names: str) -> dict[str, Any]:
        """The named sections as plain data with every default filled in (what a model card records)."""


        out = {}
        for name in names:
            module, cls = SECTIONS[name].split(":")
            out[name] = as_dict(self.get(name, getattr(importlib.import_module(module), cls)))
        return out


PARAMS_OPTION = typer.Option(PARAMS, "--params", help="params.yaml")


def stage_app() -> typer.Typer:
    return typer.Typer(add_completion=False)


def command(app: typer.Typer):
    """Register a stage's main: a Typer command whose expected errors print one line, exit 1."""
    def register(fn):
        return app.command()(one_line_errors(fn))
    return register


def out_of_space(err: BaseException) -> bool:
    """ENOSPC, however the writer reports it (Python's OSError, safetensors' Rust I/O error)."""
    return getattr(err, "errno", None) == errno.ENOSPC or "No space left on device" in str(err)


def error_line(err: BaseException) -> str:
    """The one line a user sees for an expected error."""
    if out_of_space(err):
        where = f" writing {err.filename}" if getattr(err, "filename", None) else ""
        return f"no space left on device{where}: the output was not written; free disk space and rerun"
    if isinstance(err, OSError) and err.strerror and err.filename:  # raised by the OS: say what and where
        return f"{err.strerror}: {err.filename}"
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def one_line_errors(fn):
    """Decorator for stage commands: expected errors become `error: ...` on stderr and exit 1."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (StageError, ConfigError, OSError, ValueError, RuntimeError, KeyError) as err:
            typer.echo(f"error: {error_line(err)}", err=True)
            sys.exit(1)
        except Exception as err:  # noqa: BLE001 - only a full disk is expected among the rest
            if not out_of_space(err):
                raise
            typer.echo(f"error: {error_line(err)}", err=True)
            sys.exit(1)
        finally:
            release_outputs()  # the writer locks its outputs' claims took (hyena.core.io.hold_output)

    return wrapper


def teacher_dir(p: PathsConfig) -> Path:
    """The materialised teacher every stage after `teacher` loads."""
    d = Path(p.teacher)
    if not (d / "config.json").is_file():
        raise StageError(f"teacher not found at {d} (paths.teacher): run the teacher stage first (dvc repro teacher)")
    return d


def dvclive_logger(directory: str | Path):
    """A `log(metrics, step)` callback writing DVCLive plots under `directory` (no DVC experiment)."""
    from dvclive import Live


    hold_output(directory, "dvclive")  # one writer: a second run's steps would interleave with these
    live = Live(str(directory), save_dvc_exp=False, dvcyaml=None)

    def log(metrics: dict[str, float], step: int) -> None:
        live.step = step
        for name, value in metrics.items():
            live.log_metric(name, value)

    log.live = live
    return log


def write_metrics(path: str | Path, metrics: dict[str, Any]) -> None:
    """A DVC metrics file (JSON), written atomically."""
    atomic_write_json(path, metrics)


TIMING_KEYS = ("seconds", "fit_seconds")


def split_timings(metrics: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(deterministic metrics, wall-clock figures): timings go to their own uncached file."""
    return ({k: v for k, v in metrics.items() if k not in TIMING_KEYS},
            {k: v for k, v in metrics.items() if k in TIMING_KEYS})


def read_chain(p, layer: str) -> dict:
    """The weight hashes of layers 01..`layer` that layer_<layer>/chain.json records; a missing or
    damaged directory is one line naming the stage that writes it."""
    path = p.layer(layer) / "chain.json"
    stage = "init-student" if layer == "00" else f"distill@{layer}"
    try:
        chain = json.loads(path.read_text())
    except FileNotFoundError:
        raise StageError(f"{path} not found: rerun {stage} (dvc repro {stage})") from None
    except (OSError, ValueError):
        chain = None
    if not isinstance(chain, dict):
        raise StageError(f"{path} is not a JSON object: the directory is damaged: rerun {stage} (dvc repro {stage})")
    return chain
