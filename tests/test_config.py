"""One home for every fact: typed params sections, presets as overrides, dvc.yaml code deps."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest
import yaml
from conftest import ROOT, ci_script

from hyena.core.config import ConfigError, load
from hyena.train.distill import DistillConfig
from hyena.train.lm import FinetuneConfig, PretrainConfig
from pipeline.params import SECTIONS, StageError, load_params, section
from tools.preset import available, configs, layer_chain, overrides, render, section_class


def test_committed_params_yaml_is_the_cpu_smoke_preset():
    """params.yaml is generated: it cannot drift from the preset or from the code's defaults."""
    assert (ROOT / "params.yaml").read_text() == render("cpu-smoke")


@pytest.mark.parametrize("name", available())
def test_every_preset_loads_to_what_the_code_would_use(name):
    """Every key of the rendered params is a field of its section's dataclass and every field is
    present (no silent fallback to a default that no preset uses); each section loads back to
    exactly the dataclass built from the code defaults plus the preset's overrides."""
    rendered = yaml.safe_load(render(name))
    assert list(rendered) == list(SECTIONS)
    over = overrides(name)
    for sec, cfg in configs(name).items():
        cls = section_class(sec)
        assert set(rendered[sec]) == {f.name for f in dataclasses.fields(cls)}, sec
        assert load(cls, rendered[sec], sec) == cfg, sec
        for key, value in (over.get(sec) or {}).items():  # each override really took effect
            got = getattr(cfg, key)
            if key == "layers" and isinstance(value, int):
                value = layer_chain(value)
            if dataclasses.is_dataclass(got):
                for k, v in value.items():
                    assert getattr(got, k) == v, f"{sec}.{key}.{k}"
            else:
                assert got == (tuple(value) if isinstance(got, tuple) else value), f"{sec}.{key}"


def test_paper_preset_is_the_code_defaults():
    """The paper's recipe is one preset away: the defaults are the paper's settings."""
    paper = configs("paper-pythia70m")
    assert paper["teacher"].source == "EleutherAI/pythia-70m" and paper["tokenize"].context == 1024
    d = paper["distill"]
    assert (d.lr, d.batch_size, d.epochs, d.input, d.min_lr_ratio, d.warmup_frac) == (1e-3, 60, 8, "student", 0.1, 0.025)
    assert list(d.layers) == ["01", "02", "03", "04", "05", "06"] and d.last == "06"


def test_paper_cpu_preset_is_the_papers_recipe_on_the_cpu_smoke_data():
    """The paper's method on the main command's teacher and data: same recipe knobs as the paper
    preset, same data knobs as cpu-smoke."""
    paper, cpu, smoke = configs("paper-pythia70m"), configs("paper-cpu"), configs("cpu-smoke")
    recipe = {"distill": ("input", "target", "readout"), "finetune": ("train", "ce_weight", "kl_weight"),
              "student": ("mixer", "init", "keep_attention", "out_scale")}
    for sec, keys in recipe.items():
        for key in keys:
            assert getattr(cpu[sec], key) == getattr(paper[sec], key), f"{sec}.{key}"
    assert cpu["distill"].epochs > 0 and cpu["finetune"].kl_weight == 0
    for sec in ("teacher", "tokenize", "dump", "eval"):
        assert cpu[sec] == smoke[sec], sec


def test_finetune_and_pretrain_carry_only_their_own_knobs():
    ft = {f.name for f in dataclasses.fields(FinetuneConfig)}
    pt = {f.name for f in dataclasses.fields(PretrainConfig)}
    assert "budget" not in ft and {"kl_weight", "kl_temperature", "epochs"} <= ft
    assert "budget" in pt and not {"kl_weight", "kl_temperature", "epochs"} & pt


BAD = {
    "string for a number": ({"lr": "fast"}, "distill.lr: expected a number, got 'fast'"),
    "negative batch": ({"batch_size": -4}, "distill.batch_size must be >= 1, got -4"),
    "negative epochs": ({"epochs": -1}, "distill.epochs must be >= 0"),
    "bool for an int": ({"epochs": True}, "distill.epochs: expected an integer"),
    "unknown choice": ({"input": "both"}, "distill.input: expected 'student' | 'teacher'"),
    "unknown key": ({"learning_rate": 1e-3}, "distill: unknown key(s) learning_rate"),
    "scalar for a section": (5, "distill: expected a mapping of keys"),
    "bad per-layer override": ({"layers": {"01": {"prev": "00", "lr": "x"}}}, None),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_values_are_one_line_errors_naming_the_key(case):
    raw, words = BAD[case]
    with pytest.raises(ConfigError) as err:
        load(DistillConfig, raw, "distill").for_layer("01")
    msg = str(err.value)
    assert "\n" not in msg
    assert words in msg if words else "distill.layers.01.lr" in msg


def test_library_construction_is_checked_too():
    with pytest.raises(ConfigError, match="distill.skip_first must be >= 0"):
        DistillConfig(skip_first=-1)
    with pytest.raises(ConfigError, match="teacher.random_init: expected true or false, got 'yes please'"):
        section_class("teacher")(random_init="yes please")


def test_per_layer_overrides_apply_to_that_layer_only():
    d = load(DistillConfig, {"lr": 1e-3, "layers": {"01": {"prev": "00"}, "02": {"prev": "01", "lr": 5e-4}}}, "distill")
    assert d.for_layer("01").lr == 1e-3 and d.for_layer("02").lr == 5e-4
    with pytest.raises(ConfigError, match="cannot override layers"):
        load(DistillConfig, {"layers": {"01": {"prev": "00", "layers": {}}}}, "distill").for_layer("01")


@pytest.mark.parametrize("text, words", [
    ("distill: [1, 2\n", "not valid YAML"),
    ("- teacher\n- tokenize\n", "must be a mapping of sections"),
    ("distill: 3\n", "distill: expected a mapping"),
    ("distil:\n  lr: 0.1\n", "unknown section(s) distil"),
])
def test_malformed_params_files_are_one_line_errors(tmp_path, text, words):
    path = tmp_path / "params.yaml"
    path.write_text(text)
    with pytest.raises(StageError) as err:
        raw = load_params(path)
        section(raw, "distill", DistillConfig)
    assert words in str(err.value) and "\n" not in str(err.value)


def deps_check():
    """.ci/deps_check.py, the project's own check of dvc.yaml's code deps, as a module."""
    return ci_script("deps_check")


def test_dvc_yaml_code_deps_cover_every_imported_project_file():
    """Every project file a stage imports (transitively) is in its deps, so an edit to it reruns
    the stage: `.ci/deps_check.py` finds nothing uncovered, and it does look at every stage."""
    check = deps_check()
    stages = check.stage_commands(yaml.safe_load((ROOT / "dvc.yaml").read_text()))
    assert set(stages) == set(yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"])
    assert check.uncovered(ROOT) == []
    proc = subprocess.run([sys.executable, str(ROOT / ".ci" / "deps_check.py"), str(ROOT)],
                          capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout == "", proc.stdout + proc.stderr


def test_deps_check_reports_an_import_that_no_dep_covers(tmp_path):
    """The check fails where it should: on the real dvc.yaml with `hyena/train` dropped from the
    distill stage, and on a small project whose stage imports a module lazily, relatively and
    through a package whose __init__ only a listed directory covers."""
    check = deps_check()
    dvc = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    dvc["stages"]["distill"]["do"]["deps"].remove("hyena/train")
    for name in ("hyena", "pipeline"):
        (tmp_path / name).symlink_to(ROOT / name)
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump(dvc))
    missing = check.uncovered(tmp_path)
    assert "distill: hyena/train/schedule.py is imported but not in deps" in missing, missing
    assert missing and all(line.startswith("distill: hyena/train/") for line in missing), missing

    small = tmp_path / "small"
    files = {
        "pipeline/__init__.py": "",
        "pipeline/stage.py": "import os\nfrom . import helper\n\ndef main():\n    from hyena.sub.deep import f\n",
        "pipeline/helper.py": "import hyena\n",
        "pipeline/unused.py": "",
        "hyena/__init__.py": "",
        "hyena/sub/__init__.py": "from hyena import leaf\n",
        "hyena/sub/deep.py": "import numpy\n",
        "hyena/leaf.py": "",
    }
    for rel, text in files.items():
        (small / rel).parent.mkdir(parents=True, exist_ok=True)
        (small / rel).write_text(text)
    deps = ["pipeline/__init__.py", "pipeline/stage.py", "hyena/sub"]
    (small / "dvc.yaml").write_text(yaml.safe_dump({"stages": {
        "s": {"cmd": "python -m pipeline.stage --flag", "deps": [*deps, "data/in"]},
        "other": {"cmd": "echo not a pipeline module"}}}))
    assert check.uncovered(small) == ["s: hyena/__init__.py is imported but not in deps",
                                      "s: hyena/leaf.py is imported but not in deps",
                                      "s: pipeline/helper.py is imported but not in deps"]
    proc = subprocess.run([sys.executable, str(ROOT / ".ci" / "deps_check.py"), str(small)],
                          capture_output=True, text=True)
    assert proc.returncode == 1 and proc.stdout.count("\n") == 3, proc.stdout


def test_distill_stage_declares_every_knob_that_changes_its_result():
    """Each distill@XX stage lists the distill knobs one by one (not the section: then a per-layer
    override of layer 4 would rerun layer 1 too). Every knob but the chain and logging must be there,
    or changing it (distill.target, say) would leave every layer stale."""
    stage = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]["distill"]["do"]
    knobs = {f.name for f in dataclasses.fields(DistillConfig)} - {"layers", "last", "log_every"}
    assert set(stage["params"]) == {f"distill.{k}" for k in knobs} | {"distill.layers.${key}"}


def test_exponent_floats_from_dvc_exp_run_S_are_numbers():
    """`dvc exp run -S finetune.readout_lr=1e-6` writes YAML that PyYAML (YAML 1.1) reads as the
    string '1e-06'; the loader takes it as the number it is, and still refuses other text."""
    raw = yaml.safe_load("lr: 1e-4\nfilter_lr: 5E-3\nridge: '2.5e+1'\n")
    assert isinstance(raw["lr"], str)  # the YAML quirk this is about
    cfg = load(DistillConfig, raw, "distill")
    assert (cfg.lr, cfg.filter_lr, cfg.ridge) == (1e-4, 5e-3, 25.0)
    with pytest.raises(ConfigError, match="distill.lr: expected a number, got '1e-4x'"):
        load(DistillConfig, {"lr": "1e-4x"}, "distill")
    with pytest.raises(ConfigError, match="distill.epochs: expected an integer"):
        load(DistillConfig, {"epochs": "1e2"}, "distill")  # only floats: an integer field stays strict
