"""A MultiHyena student through every stage after the activation dump: initialised from the
teacher's attention, attention transfer (least-squares readout + gradient steps, teacher-forced),
assemble, fine-tune, the recurrent student, evaluation."""

import json
import shutil

import yaml
from conftest import SMALL_STAGES, run_stage, small_project_params


def test_multihyena_student_through_every_stage(tmp_path, small_project, owt_jsonl):
    cfg = small_project_params(tmp_path, small_project / "tiny-neox", owt_jsonl)
    done = yaml.safe_load((small_project / "params.yaml").read_text())["paths"]
    for key in ("teacher", "tokens", "activations"):  # they do not depend on the student
        shutil.copytree(done[key], cfg["paths"][key])
    cfg["student"].update({"mixer": "multihyena", "init": "teacher_attention"})
    cfg["distill"].update({"input": "teacher", "target": "mixer_output", "readout": "least_squares", "epochs": 2})
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(cfg, sort_keys=False))
    for args in [*SMALL_STAGES[3:], ["eval"]]:
        result = run_stage(params, *args)
        assert result.exit_code == 0, f"{args}: {result.output}\n{result.exception!r}"

    for layer in ("01", "02"):
        m = json.loads((tmp_path / f"reports/metrics/distill/layer_{layer}.json").read_text())
        assert m["target"] == "mixer_output" and m["steps"] > 0 and m["val_nmse"] == m["val_nmse"]  # trained, not NaN

    from hyena.model.multihyena_mixer import MultiHyenaMixer
    from hyena.recurrence.model import HyenaRecurrentForCausalLM
    from hyena.recurrence.multihyena import RecurrentMultiHyena
    from hyena.student import HyenaStudentForCausalLM

    finetuned = HyenaStudentForCausalLM.from_pretrained(tmp_path / "data/students/finetuned")
    assert finetuned.config.mixer == "multihyena" and isinstance(finetuned.mixer(0), MultiHyenaMixer)
    recurrent = HyenaRecurrentForCausalLM.from_pretrained(tmp_path / "data/students/recurrent")
    assert isinstance(recurrent.mixer(1), RecurrentMultiHyena)
    card = (tmp_path / "data/students/finetuned/README.md").read_text()
    assert "Mixer: MultiHyena" in card
