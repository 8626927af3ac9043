"""A failed `dvc exp run` deletes the outputs of the stage it ran (DVC removes every non-persist
output before running a command). Cached outputs come back with `dvc checkout`; the uncached
metrics, curves and timings under reports/ come back only from DVC's run-cache, which DVC skips
for a whole stage as soon as one uncached output is a plain `outs:` entry (dvc/stage/__init__.py,
Stage.run: `no_cache_outs`). Measured with DVC 3.67 on a one-stage repo: an uncached DVCLive dir
under `outs:` -> after a failed `dvc exp run -S lr=-1`, `dvc repro` reruns the stage; the same
dir under `plots:` -> "Stage 'train' is cached - skipping run, checking out outputs"."""

from __future__ import annotations

import yaml
from conftest import ROOT


def _stages(dvc_yaml: dict):
    for name, stage in dvc_yaml["stages"].items():
        yield name, stage.get("do", stage)  # foreach stages keep their body under `do`


def test_uncached_outputs_are_metrics_or_plots_so_the_run_cache_can_restore_them():
    dvc_yaml = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    plain = [f"{name}: {next(iter(out))}" for name, stage in _stages(dvc_yaml) for out in stage.get("outs", [])
             if isinstance(out, dict) and next(iter(out.values())).get("cache") is False
             and name != "check-params"]  # its record is rewritten in a second on any params change
    assert plain == [], "uncached plain outs disable DVC's run-cache for their stage: declare them under plots/metrics"
    uncached = [next(iter(o)) for _, stage in _stages(dvc_yaml) for key in ("metrics", "plots")
                for o in stage.get(key, []) if isinstance(o, dict)]
    assert any("dvclive" in o for o in uncached) and any(o.endswith(".png") for o in uncached)
