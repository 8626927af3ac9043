"""`hyena-distill preset NAME`: replace params.yaml with a complete preset from presets/."""

from __future__ import annotations

import shutil
from pathlib import Path

import typer

from pipeline.common import PARAMS, StageError, one_line_errors

app = typer.Typer(add_completion=False)

PRESETS = Path(__file__).resolve().parents[1] / "presets"


def available() -> list[str]:
    return sorted(p.stem for p in PRESETS.glob("*.yaml"))


@app.command()
@one_line_errors
def main(
    name: str = typer.Argument(None, help="preset name (omit to list them)"),
    params: Path = typer.Option(PARAMS, help="params file to overwrite"),
) -> None:
    """Apply a preset: cpu-experiment (default, offline, ~1 h), cpu-smoke (offline, quick), paper-pythia70m (the paper's setup), tiny (tests)."""
    if name is None:
        for preset in available():
            first = (PRESETS / f"{preset}.yaml").read_text().splitlines()[0].lstrip("# ")
            typer.echo(f"{preset:18s} {first}")
        return
    src = PRESETS / f"{name}.yaml"
    if not src.is_file():
        raise StageError(f"no preset {name!r}; available: {', '.join(available())}")
    shutil.copyfile(src, params)
    typer.echo(f"{params} <- {src.relative_to(PRESETS.parent)} (then: dvc repro)")


if __name__ == "__main__":
    app()
