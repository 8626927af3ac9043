"""Stage `check-params`: all of params.yaml against the typed configs, before any other stage.

DVC reruns a stage only when a param it lists changes, so a check inside each stage never sees a
misspelt key (`distill.lrr`), a misspelt section (`distil:`) or a bad value of a knob no stage lists
(`distill.log_every: abc`): `dvc repro` would say "up to date" and the change would do nothing. This
stage depends on the whole file (dvc.yaml: `params.yaml:` with no keys), so DVC runs it on every
change, and the first stage depends on its output, so it runs before any other. It also makes the
checks across sections that DVC would otherwise pre-empt with its own message (`distill.last` names
a layer the teacher does not have, so `data/students/layer_07` is "No such file or directory").
Cheap: it reads params.yaml and at most the teacher's config, never a model.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import typer

from hyena.teachers import TeacherConfig, teacher_depth
from hyena.train.distill import DistillConfig
from pipeline.params import (
    PARAMS_OPTION,
    SECTIONS,
    Params,
    StageError,
    command,
    stage_app,
    write_metrics,
)

app = stage_app()


def check(params: Params) -> dict:
    """Every section as its typed config, then the cross-section facts; one StageError for the first
    problem. Returns what was checked (the stage's output)."""
    for name, spec in SECTIONS.items():
        module, cls = spec.split(":")
        params.get(name, getattr(importlib.import_module(module), cls))

    d = params.get("distill", DistillConfig)
    if not d.layers:
        raise StageError("distill.layers is empty: give at least one layer (e.g. `distill: {layers: 6}` in a preset)")
    for key in d.layers:
        d.for_layer(key)  # per-layer overrides are checked configs too
        prev = d.prev(key)
        if prev != "00" and prev not in d.layers:
            raise StageError(f"distill.layers.{key}.prev is {prev!r}, which is neither \"00\" nor a key of distill.layers: "
                             "fix that entry")
    if d.last != max(d.layers):
        raise StageError(f"distill.last is {d.last!r} but the last key of distill.layers is {max(d.layers)!r}: "
                         f"set distill.last to \"{max(d.layers)}\"")
    t = params.get("teacher", TeacherConfig)
    depth = teacher_depth(t.source, params.paths.teacher)
    if depth is not None and int(d.last) > depth:
        raise StageError(f"distill.last is {d.last!r} but the teacher ({t.source}) has {depth} decoder layers: "
                         f"distill layers 01..{depth:02d} only (distill.layers and distill.last)")
    return {"sections": sorted(SECTIONS), "status": "ok"}


@command(app)
def main(params_file: Path = PARAMS_OPTION) -> None:
    """Check every section and key of params.yaml, and the facts that span sections."""
    params = Params.read(params_file)
    record = check(params)
    # constant while params.yaml is valid, so a rerun of this stage never reruns the stages after it
    write_metrics(params.paths.check, record)
    typer.echo(f"{params_file}: every section and key checked")


if __name__ == "__main__":
    app()
