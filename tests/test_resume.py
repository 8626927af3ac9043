"""Fine-tuning killed with SIGKILL resumes to the bytes of an uninterrupted run, with its metrics
and DVCLive curve complete; a checkpoint of another computation (here: another input model, as
after a change upstream) is never resumed."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml
from conftest import ROOT, run_stage

STEPS = 12  # 8 training sequences, batch 4, 6 epochs


def finetune_params(project: Path, work: Path, distilled: Path) -> Path:
    """Params of a finetune of `distilled` whose outputs all live under `work`."""
    params = yaml.safe_load((project / "params.yaml").read_text())
    (work / "students").mkdir(parents=True)
    shutil.copytree(distilled, work / "students/distilled")
    params["paths"].update(students=str(work / "students"), checkpoints=str(work / "checkpoints"),
                           reports=str(work / "reports"))
    params["finetune"].update(epochs=6.0, checkpoint_every=3, log_every=1)
    path = work / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


def checkpoints(work: Path) -> list[Path]:
    """Finished checkpoint directories (not the .tmp/.old of one being written)."""
    return [d for d in (work / "checkpoints").glob("finetune-*") if "." not in d.name]


def kill_after_first_checkpoint(params: Path, work: Path) -> int:
    """Run the finetune stage as a process and SIGKILL it once a checkpoint exists; its step."""
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.finetune", "--params", str(params)], cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while not [d for d in checkpoints(work) if (d / "state.json").is_file()]:
        assert proc.poll() is None, "finetune ended before it could be killed"
        assert time.time() < deadline, "no checkpoint within 240 s"
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (work / "students/finetuned").exists()
    (state,) = [json.loads((d / "state.json").read_text()) for d in checkpoints(work)]
    assert 0 < state["step"] < STEPS
    return state["step"]


def outcome(work: Path) -> dict:
    """What a finetune leaves: the model's bytes, its metrics (but the resume point), its curves."""
    metrics = json.loads((work / "reports/metrics/finetune.json").read_text())
    curves = work / "reports/dvclive/finetune/plots/metrics"
    return {"weights": hashlib.sha256((work / "students/finetuned/model.safetensors").read_bytes()).hexdigest(),
            "metrics": {k: v for k, v in metrics.items() if k != "resumed_from"},
            "curves": {f.name: f.read_text() for f in sorted(curves.glob("*.tsv"))}}


def test_sigkill_then_rerun_resumes_to_the_uninterrupted_result(small_project, tmp_path):
    distilled = small_project / "data/students/distilled"
    clean = tmp_path / "clean"
    result = run_stage(finetune_params(small_project, clean, distilled), "finetune")
    assert result.exit_code == 0, result.output

    killed = tmp_path / "killed"
    params = finetune_params(small_project, killed, distilled)
    step = kill_after_first_checkpoint(params, killed)
    result = run_stage(params, "finetune")
    assert result.exit_code == 0, result.output
    assert "not resuming" not in result.output
    assert json.loads((killed / "reports/metrics/finetune.json").read_text())["resumed_from"] >= step
    got, want = outcome(killed), outcome(clean)
    assert got["weights"] == want["weights"]
    assert got["metrics"] == want["metrics"]  # val_loss_before included: kept in the checkpoint
    assert got["curves"] == want["curves"] and got["curves"]["train_loss.tsv"].count("\n") == STEPS + 1
    assert not checkpoints(killed)  # removed once the output is written


def test_a_checkpoint_of_another_input_model_is_not_resumed(small_project, tmp_path):
    """The issue's scenario: finetune is killed after a checkpoint, something upstream changes and
    produces a new distilled model, finetune reruns. It must start over, and say so."""
    work = tmp_path / "run"
    params = finetune_params(small_project, work, small_project / "data/students/distilled")
    kill_after_first_checkpoint(params, work)
    new_input = small_project / "data/students/finetuned"  # any other student stands for the new model
    shutil.rmtree(work / "students/distilled")
    shutil.copytree(new_input, work / "students/distilled")

    result = run_stage(params, "finetune")
    assert result.exit_code == 0, result.output
    assert "not resuming" in result.stderr and "another input_model" in result.stderr, result.stderr
    assert json.loads((work / "reports/metrics/finetune.json").read_text())["resumed_from"] == 0

    clean = tmp_path / "clean"
    assert run_stage(finetune_params(small_project, clean, new_input), "finetune").exit_code == 0
    assert outcome(work)["weights"] == outcome(clean)["weights"]


def test_distill_dying_while_it_writes_keeps_the_previous_layer_whole(small_project, tmp_path, monkeypatch):
    """A layer's weights and its outputs (acts.zarr) are one directory: a failure half-way through
    writing the new pair leaves the old pair, byte for byte, and no temporary directory."""
    import hyena.data.store
    import hyena.train.distill

    params = yaml.safe_load((small_project / "params.yaml").read_text())
    shutil.copytree(params["paths"]["students"], tmp_path / "students")
    params["paths"].update(students=str(tmp_path / "students"), reports=str(tmp_path / "reports"))
    params["distill"]["lr"] = 5e-3  # other weights than the layer on disk
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    layer = tmp_path / "students/layer_02"
    before = {str(p.relative_to(layer)): p.read_bytes() for p in sorted(layer.rglob("*")) if p.is_file()}
    write_outputs = hyena.data.store.write_outputs

    def dies_half_way(path, shapes, fill, **kwargs):
        write_outputs(path, {"train": shapes["train"]}, fill, **kwargs)  # the new weights and half the outputs exist
        raise OSError(5, "Input/output error", str(path))

    monkeypatch.setattr(hyena.train.distill, "write_outputs", dies_half_way)  # where save_layer calls it
    result = run_stage(tmp_path / "params.yaml", "distill", "--layer", "02")
    assert result.exit_code == 1 and "Input/output error" in result.stderr
    after = {str(p.relative_to(layer)): p.read_bytes() for p in sorted(layer.rglob("*")) if p.is_file()}
    assert after == before
    assert not [p for p in (tmp_path / "students").iterdir() if p.name.startswith(".")]  # no leftovers
