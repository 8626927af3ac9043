"""A hybrid student through the stages: the kept layer's distill stage passes the teacher's layer
through (and still writes every output dvc.yaml declares), later stages keep its attention."""

import json
import shutil

import yaml
from conftest import SMALL_STAGES, run_stage, small_project_params


def test_kept_attention_layer_through_every_stage(tmp_path, small_project, owt_jsonl):
    # the teacher, tokens and activations do not depend on the student: the session's small run's
    cfg = small_project_params(tmp_path, small_project / "tiny-neox", owt_jsonl)
    done = yaml.safe_load((small_project / "params.yaml").read_text())["paths"]
    for key in ("teacher", "tokens", "activations"):
        shutil.copytree(done[key], cfg["paths"][key])
    cfg["student"]["keep_attention"] = [1]
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(cfg, sort_keys=False))
    assert SMALL_STAGES[:3] == [["teacher"], ["tokenize"], ["dump-activations"]]
    for args in SMALL_STAGES[3:]:
        result = run_stage(params, *args)
        assert result.exit_code == 0, f"{args}: {result.output}\n{result.exception!r}"

    kept = json.loads((tmp_path / "reports/metrics/distill/layer_01.json").read_text())
    trained = json.loads((tmp_path / "reports/metrics/distill/layer_02.json").read_text())
    assert kept["kept_attention"] and kept["steps"] == 0
    assert kept["val_layer_mse"] < 1e-8  # layer 1 reads the teacher's embedding output: it is the teacher's layer
    assert "kept_attention" not in trained and trained["steps"] > 0
    assert "readout_norm" not in kept and trained["readout_norm"] > 0
    # DVC requires every declared output, the kept layer's DVCLive directory included, and it must
    # not be empty: git drops empty directories, so a clone (or a queued experiment) would rerun it
    for layer, metrics in (("01", kept), ("02", trained)):
        summary = json.loads((tmp_path / f"reports/dvclive/distill_{layer}/metrics.json").read_text())
        assert summary["val_layer_mse"] == metrics["val_layer_mse"]

    from hyena.recurrence.mixer import RecurrentHyenaMixer
    from hyena.recurrence.model import HyenaRecurrentForCausalLM

    recurrent = HyenaRecurrentForCausalLM.from_pretrained(tmp_path / "data/students/recurrent")
    assert recurrent.config.keep_attention == [1]
    assert not isinstance(recurrent.mixer(0), RecurrentHyenaMixer)
    assert isinstance(recurrent.mixer(1), RecurrentHyenaMixer)
