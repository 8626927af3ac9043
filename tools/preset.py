"""`hyena-distill preset NAME`: write params.yaml from a preset.

A preset (`presets/NAME.yaml`) says only what differs from the code defaults (the dataclasses
in `pipeline.params.SECTIONS`, which follow the paper), optionally on top of another preset
(`extends: NAME`). `distill.layers: N` is shorthand for the chain "01" <- "00" ... N. The written
params.yaml is complete and commented (every knob with its help text), so DVC tracks every value
and `dvc exp run -S section.key=value` can change any of them.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import typer
import yaml

from hyena.core.config import ConfigError, as_dict, load, merge, render_section
from pipeline.params import PARAMS, SECTIONS, StageError, one_line_errors

app = typer.Typer(add_completion=False)

PRESETS = Path(__file__).resolve().parents[1] / "presets"


def available() -> list[str]:
    return sorted(p.stem for p in PRESETS.glob("*.yaml"))


def section_class(name: str) -> type:
    module, cls = SECTIONS[name].split(":")
    return getattr(importlib.import_module(module), cls)


def layer_chain(n: int) -> dict[str, dict[str, str]]:
    """`distill.layers: N` -> {"01": {prev: "00"}, ..., "N": {prev: "N-1"}}."""
    return {f"{i:02d}": {"prev": f"{i - 1:02d}"} for i in range(1, n + 1)}


def _read(name: str) -> tuple[dict, str]:
    path = PRESETS / f"{name}.yaml"
    if not path.is_file():
        raise StageError(f"no preset {name!r}; available: {', '.join(available())}")
    text = path.read_text()
    raw = yaml.safe_load(text) or {}
    if not isinstance(raw, dict):
        raise StageError(f"{path} must be a mapping of sections")
    title = next((line.lstrip("# ").strip() for line in text.splitlines() if line.startswith("#")), name)
    return raw, title


def overrides(name: str, _seen: tuple[str, ...] = ()) -> dict[str, Any]:
    """The preset's overrides merged over those of the preset it extends (if any)."""
    if name in _seen:
        raise StageError(f"preset {name!r} extends itself through {' -> '.join(_seen)}")
    raw, _ = _read(name)
    parent = raw.pop("extends", None)
    out = overrides(parent, (*_seen, name)) if parent else {}
    unknown = sorted(set(raw) - set(SECTIONS))
    if unknown:
        raise StageError(f"preset {name}: unknown section(s) {', '.join(unknown)}; known: {', '.join(SECTIONS)}")
    for sec, value in raw.items():
        out[sec] = merge(section_class(sec), out.get(sec) or {}, value or {})
    return out


def configs(name: str) -> dict[str, Any]:
    """Every section of preset `name` as its checked config instance."""
    over = overrides(name)
    distill = over.get("distill") or {}
    if isinstance(distill.get("layers"), int):
        distill = {**distill, "layers": layer_chain(distill["layers"])}
    if distill.get("layers") and "last" not in distill:
        distill = {**distill, "last": max(distill["layers"])}
    over = {**over, "distill": distill}
    out = {}
    for sec in SECTIONS:
        cls = section_class(sec)
        try:
            out[sec] = load(cls, merge(cls, as_dict(cls()), over.get(sec) or {}), sec)
        except ConfigError as err:
            raise StageError(f"preset {name}: {err}") from None
    return out


def render(name: str) -> str:
    """params.yaml for preset `name`: header, then every section with every key, commented."""
    _, title = _read(name)
    lines = [
        f"# Preset {name}: {title.removeprefix(name).lstrip(':').strip()}",
        f"# Written by `hyena-distill preset {name}` from presets/{name}.yaml over the code defaults (the",
        "# paper's settings). Every knob of the pipeline, one section per stage; `dvc exp run -S section.key=value`",
        "# changes one and reruns only the stages that depend on it.",
    ]
    for sec, cfg in configs(name).items():
        doc = " ".join((type(cfg).__doc__ or "").strip().split("\n\n")[0].split())
        doc = doc.split(": ", 1)[-1] if doc.startswith("params.yaml") else doc
        lines += ["", f"{sec}:  # {doc}"]
        lines += render_section(cfg)
    return "\n".join(lines) + "\n"


@app.command()
@one_line_errors
def main(
    name: str = typer.Argument(None, help="preset name (omit to list them)"),
    params: Path = typer.Option(PARAMS, help="params file to write"),
    check: bool = typer.Option(False, "--check", help="only check that the params file equals the preset's render"),
) -> None:
    """Write params.yaml from a preset: cpu-smoke (the default), cpu-experiment, paper-pythia70m, tiny."""
    if name is None:
        for preset in available():
            typer.echo(f"{preset:18s} {_read(preset)[1].removeprefix(preset).lstrip(':').strip()}")
        return
    text = render(name)
    if check:
        if not Path(params).is_file() or Path(params).read_text() != text:
            raise StageError(f"{params} differs from preset {name}: run `hyena-distill preset {name}`")
        typer.echo(f"{params} == preset {name}")
        return
    Path(params).write_text(text)
    typer.echo(f"{params} <- presets/{name}.yaml (then: dvc repro)")


if __name__ == "__main__":
    app()
