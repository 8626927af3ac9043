"""End to end: `dvc repro` of the whole pipeline on the `tiny` preset in a temporary clone (once per
test run: conftest's `tiny_repo`), then what a team does with it, each test on its own copy of the
finished run: a library edit, param changes, an experiment, a push and pull; and a second run from
scratch in another directory, which must give the same bytes."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import yaml
from conftest import commit_all, copy_of, run_tiny_pipeline, sh


@pytest.mark.slow
def test_dvc_repro_runs_every_stage(tiny_repo):
    repo = tiny_repo
    params = yaml.safe_load((repo / "params.yaml").read_text())
    keys = list(params["distill"]["layers"])
    for path in ["data/teacher/model.safetensors", "data/teacher/teacher.json",
                 "data/tokens/train.npy", "data/tokens/manifest.json", "data/activations.zarr/zarr.json",
                 "data/students/layer_00/config.json", "data/students/distilled/model.safetensors",
                 "data/students/finetuned/model.safetensors", "data/students/pretrained/model.safetensors",
                 "data/students/recurrent/model.safetensors",
                 "data/eval/report.md", "data/eval/ppl.png", "reports/plots/layer_mse.png",
                 *[f"data/students/layer_{k}/layer.safetensors" for k in keys],
                 *[f"data/students/layer_{k}/acts.zarr/zarr.json" for k in keys]]:
        assert (repo / path).exists(), path
    for metrics in ["reports/metrics/assemble.json", "reports/metrics/finetune.json",
                    "reports/metrics/pretrain.json", "reports/metrics/recurrent.json", "data/eval/metrics.json",
                    *[f"reports/metrics/distill/layer_{k}.json" for k in keys]]:
        values = _numbers(json.loads((repo / metrics).read_text()))
        assert values and all(math.isfinite(v) for v in values), metrics
    for k in keys:
        m = json.loads((repo / f"reports/metrics/distill/layer_{k}.json").read_text())
        assert m["val_mse"] < m["val_mse_before"], (k, m)
    rec = json.loads((repo / "reports/metrics/recurrent.json").read_text())
    assert rec["decode_check_rel_err"] < 1e-3, rec  # prefill + O(1) steps reproduce the full forward
    assert "up to date" in sh(["dvc", "status"], repo).lower() or "Data and pipelines are up to date" in sh(
        ["dvc", "status"], repo)
    # layer 1 reads the teacher's embedding output: no copy of it is made for the student
    assert not (repo / "data/students/layer_00/acts.zarr").exists()
    # every student directory carries its tokenizer
    for name in ("layer_00", "distilled", "finetuned", "pretrained", "recurrent"):
        assert (repo / "data/students" / name / "tokenizer.json").is_file(), name


STUDENTS = ("layer_00", "distilled", "finetuned", "pretrained", "recurrent")


@pytest.mark.slow
def test_every_student_directory_has_a_model_card(tiny_repo):
    """Each student's README.md names its teacher (and its weights hash), the params that made
    it, the training tokens of every stage behind it and its own stage's metrics."""
    repo = tiny_repo
    from hyena.model.cards import CARD, ModelCard

    teacher = json.loads((repo / "data/teacher/teacher.json").read_text())
    params = yaml.safe_load((repo / "params.yaml").read_text())
    cards = {name: ModelCard.read(repo / "data/students" / name) for name in STUDENTS}
    for name, card in cards.items():
        head = yaml.safe_load((repo / "data/students" / name / CARD).read_text().split("---\n", 2)[1])
        assert head["library_name"] == "transformers" and "hyena" in head["tags"], name
        assert card.name == name and card.teacher["weights_hash"] == teacher["weights_hash"], name
    metrics = {m: json.loads((repo / f"reports/metrics/{m}.json").read_text()) for m in ("finetune", "pretrain")}
    distill = sum(json.loads((repo / f"reports/metrics/distill/layer_{k}.json").read_text())["train_tokens"]
                  for k in params["distill"]["layers"])
    assert cards["layer_00"].training_tokens == {} and cards["layer_00"].recipe["student"] == params["student"]
    assert cards["distilled"].training_tokens == {"distill": distill}
    assert cards["finetuned"].training_tokens == {"distill": distill, "finetune": metrics["finetune"]["train_tokens"]}
    assert cards["recurrent"].training_tokens == cards["finetuned"].training_tokens
    assert cards["pretrained"].training_tokens == {"pretrain": metrics["pretrain"]["train_tokens"]}
    assert cards["finetuned"].recipe["finetune"]["lr"] == params["finetune"]["lr"]
    assert cards["finetuned"].recipe["distill"]["epochs"] == params["distill"]["epochs"]
    assert cards["recurrent"].recipe["recurrent"]["fit_len"] == params["recurrent"]["fit_len"]
    assert cards["finetuned"].metrics["val_ppl"] == pytest.approx(metrics["finetune"]["val_ppl"], rel=1e-5)
    assert "import hyena.recurrence" in (repo / "data/students/recurrent" / CARD).read_text()


def _file_hashes(root: Path) -> dict[str, str]:
    import hashlib

    return {str(f.relative_to(root)): hashlib.sha256(f.read_bytes()).hexdigest()
            for f in sorted(root.rglob("*")) if f.is_file()}


@pytest.mark.slow
def test_dvc_push_to_a_remote_and_pull_into_a_fresh_clone(tiny_repo, tmp_path):
    """Sharing a run: commit dvc.lock, `dvc push` to a directory remote, `git clone` elsewhere,
    `dvc pull`: every stage is up to date there, with byte-identical artifacts."""
    repo = copy_of(tiny_repo, tmp_path, link_data=True)  # no stage runs here
    remote, clone = repo.parent / "remote", repo.parent / "clone"  # the clone sits beside ../shared too
    sh(["dvc", "remote", "add", "-d", "team", str(remote)], repo)
    commit_all(repo, "tiny run")
    sh(["dvc", "push"], repo)
    sh(["git", "clone", "-q", str(repo), str(clone)], repo.parent)
    assert not (clone / "data/students/finetuned").exists() and (clone / "dvc.lock").is_file()
    sh(["dvc", "pull"], clone)
    assert "up to date" in sh(["dvc", "status"], clone).lower()
    assert "in sync" in sh(["dvc", "status", "--cloud"], clone).lower()
    assert _file_hashes(clone / "data") == _file_hashes(repo / "data")
    assert (clone / "data/students/finetuned/README.md").is_file() and (clone / "data/eval/report.md").is_file()


def lock_outs(repo: Path) -> dict[str, str]:
    """{output path: md5} of every stage in dvc.lock."""
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    return {out["path"]: out["md5"] for stage in lock["stages"].values() for out in stage.get("outs", [])}


UNCACHED_BY_DESIGN = ("reports/timings/", "reports/dvclive/")  # wall-clock figures, DVCLive's own logs


@pytest.mark.slow
def test_a_second_run_from_scratch_elsewhere_writes_byte_identical_outputs(request, tmp_path):
    """Determinism: a second fresh project in another directory, `dvc repro` of every stage with
    no cache to reuse, gives every output the hash the session's run gave it, apart from the
    declared timing files and DVCLive logs, which are not cached. The second run goes first, so
    that under pytest-xdist it runs beside the session's run instead of after it."""
    second = run_tiny_pipeline(tmp_path)
    repo = request.getfixturevalue("tiny_repo")
    stages = set(yaml.safe_load((repo / "dvc.lock").read_text())["stages"])
    assert set(yaml.safe_load((second / "dvc.lock").read_text())["stages"]) == stages
    first, again = lock_outs(repo), lock_outs(second)
    assert set(first) == set(again)
    changed = sorted(p for p in first if first[p] != again[p] and not p.startswith(UNCACHED_BY_DESIGN))
    assert changed == [], changed


@pytest.mark.slow
def test_a_library_edit_marks_exactly_the_stages_that_run_it_stale(tiny_repo, tmp_path):
    """dvc.yaml's code deps are true: an edit to the LR schedule (training only) makes every
    training stage stale and none of the data stages."""
    repo = copy_of(tiny_repo, tmp_path, link_data=True)  # no stage runs here
    schedule = repo / "hyena" / "train" / "schedule.py"
    saved = schedule.read_text()
    schedule.write_text(saved + "\n# an edit\n")
    try:
        status = sh(["dvc", "status"], repo)
    finally:
        schedule.write_text(saved)
    stale = set(re.findall(r"^(\S+):", status, flags=re.M))
    keys = list(yaml.safe_load((repo / "params.yaml").read_text())["distill"]["layers"])
    assert {f"distill@{k}" for k in keys} | {"finetune", "pretrain"} <= stale, status
    assert not stale & {"teacher", "tokenize", "dump-activations", "init-student", "eval"}, status
    assert "up to date" in sh(["dvc", "status"], repo).lower()


def _set_params(repo: Path, *overrides) -> str:
    """Apply ((key, ...), value) overrides to params.yaml; returns the previous text."""
    params = repo / "params.yaml"
    saved = params.read_text()
    data = yaml.safe_load(saved)
    for path, value in overrides:
        node = data
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
    params.write_text(yaml.safe_dump(data, sort_keys=False))
    return saved


@pytest.mark.slow
def test_param_changes_rerun_only_dependent_stages(tiny_copy):
    repo = tiny_copy
    keys = list(yaml.safe_load((repo / "params.yaml").read_text())["distill"]["layers"])

    # a global distillation knob: every distill stage, nothing upstream, not the baseline
    saved = _set_params(repo, (("distill", "lr"), 0.002))
    running = set(re.findall(r"Running stage '([^']+)'", sh(["dvc", "repro", "--dry"], repo)))
    (repo / "params.yaml").write_text(saved)
    assert {f"distill@{k}" for k in keys} <= running
    assert not running & {"tokenize", "dump-activations", "init-student", "pretrain"}

    # one layer's override: that layer reruns, and after it only the layer above it is stale
    _set_params(repo, (("distill", "layers", "02", "lr"), 5e-4))
    running = set(re.findall(r"Running stage '([^']+)'", sh(["dvc", "repro", "--dry"], repo)))
    assert "distill@02" in running and "distill@01" not in running
    sh(["dvc", "repro", "-s", "distill@02"], repo)
    # `dvc status` names the stages whose own deps changed: only the next layer
    status = sh(["dvc", "status"], repo)
    stale = set(re.findall(r"^(\S+):", status, flags=re.M))
    assert "distill@03" in stale, status
    assert not stale & {"distill@01", "distill@02", "tokenize"}, status
    # and a repro from there runs every layer above 2 and what depends on them, nothing below; up to
    # the fine-tune only (distill-recurrent and eval hang from its output by the same kind of dep)
    running = set(re.findall(r"Running stage '([^']+)'", sh(["dvc", "repro", "finetune"], repo)))
    above = {f"distill@{k}" for k in keys if int(k) > 2}
    assert above | {"assemble", "finetune"} <= running, running
    assert not running & {"distill@01", "distill@02", "tokenize", "dump-activations"}
    stale = set(re.findall(r"^(\S+):", sh(["dvc", "status"], repo), flags=re.M))
    assert {"distill-recurrent", "eval"} <= stale and not stale & {"finetune", "assemble"}, stale


def _numbers(obj):
    if isinstance(obj, dict):
        return [v for x in obj.values() for v in _numbers(x)]
    if isinstance(obj, list):
        return [v for x in obj for v in _numbers(x)]
    return [float(obj)] if isinstance(obj, (int, float)) and not isinstance(obj, bool) else []


@pytest.mark.slow
def test_dvc_exp_run_shows_in_exp_show_and_the_ablation_table(tiny_copy):
    repo = tiny_copy
    # a queued-style ablation on one knob, up to the assembled student only (no fine-tune / eval)
    keys = list(yaml.safe_load((repo / "params.yaml").read_text())["distill"]["layers"])
    out = sh(["dvc", "exp", "run", "-n", "lr-2e-3", "-S", "distill.lr=0.002", "assemble"], repo)
    ran = set(re.findall(r"Running stage '([^']+)'", out))
    assert "assemble" in ran and not ran & {"tokenize", "dump-activations", "init-student", "finetune", "eval"}
    from tools.experiments import variants_from_exp_show

    exps = json.loads(sh(["dvc", "exp", "show", "--json"], repo))
    variant = next(v for v in variants_from_exp_show(exps) if v.name == "lr-2e-3")
    assert variant.params["distill.lr"] == 0.002
    assert sorted(variant.layer_mse) == [int(k) for k in keys] and all(math.isfinite(x) for x in variant.layer_mse.values())
    sh(["python", "-m", "tools.ablations", "--only", "lr-2e-3"], repo)
    table = (repo / "reports" / "ablations.md").read_text()
    row = next(line for line in table.splitlines() if line.startswith("| lr-2e-3"))
    assert f"| {len(keys)} |" in row, table
    assert (repo / "reports" / "plots" / "ablations_layer_mse.png").stat().st_size > 1000
