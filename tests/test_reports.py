"""Report tools: ablation comparison from `dvc exp show --json` (DVC 3 layout), training curves from DVCLive logs."""

from __future__ import annotations

import json

import yaml
from typer.testing import CliRunner

from tools.ablations import app
from tools.experiments import variants_from_exp_show


def _state(rev, name, lr, inp, mses, free, ppl=None):
    metrics = {f"reports/metrics/distill/layer_{i + 1:02d}.json": {"data": {"val_mse": m, "steps": 4}}
               for i, m in enumerate(mses)}
    metrics["reports/metrics/assemble.json"] = {"data": {"free_running_val_mse": {f"{i + 1:02d}": f for i, f in enumerate(free)}}}
    if ppl is not None:
        metrics["data/eval/metrics.json"] = {"data": {"finetuned": {"ppl_owt": ppl}}}
    params = {"params.yaml": {"data": {"distill": {"lr": lr, "input": inp, "layers": {"01": {"prev": "00"}}},
                                       "eval": {"models": {"teacher": "teacher"}}}}}
    return {"rev": rev, "name": name, "data": {"rev": rev, "metrics": metrics, "params": params}}


def _exp_show():
    base = _state("a" * 40, "main", 1e-3, "student", [0.5, 0.8], [0.5, 0.9], ppl=120.0)
    base["experiments"] = [
        {"name": "teacher-forced", "executor": None,
         "revs": [_state("b" * 40, "teacher-forced", 1e-3, "teacher", [0.4, 0.6], [0.4, 1.5])]},
        {"name": "lr-3e-3", "executor": None, "revs": [_state("c" * 40, "lr-3e-3", 3e-3, "student", [0.7, 1.1], [0.7, 1.2])]},
        {"name": "queued-one", "executor": {"state": "queued"}, "revs": [{"rev": "d" * 40, "name": "queued-one", "data": None}]},
    ]
    workspace = {"rev": "workspace", "name": None, "data": {"metrics": {}, "params": {}}}
    return [workspace, base]


def test_variants_carry_per_layer_metrics_and_skip_runs_without_metrics():
    variants = variants_from_exp_show(_exp_show())
    assert [v.name for v in variants] == ["main", "teacher-forced", "lr-3e-3"]
    tf = variants[1]
    assert tf.layer_mse == {1: 0.4, 2: 0.6} and tf.free_mse == {1: 0.4, 2: 1.5}
    assert tf.params["distill.input"] == "teacher"
    assert variants[0].metrics["metrics.finetuned.ppl_owt"] == 120.0


def test_workspace_counts_only_when_it_holds_its_own_run():
    entries = _exp_show()
    same = _state("workspace", None, 3e-3, "student", [0.7, 1.1], [0.7, 1.2])  # = the applied lr-3e-3 exp
    assert [v.name for v in variants_from_exp_show([same, entries[1]])] == ["main", "teacher-forced", "lr-3e-3"]
    own = _state("workspace", None, 5e-4, "student", [0.3, 0.4], [0.3, 0.5])  # an uncommitted repro
    variants = variants_from_exp_show([own, entries[1]])
    assert variants[0].name == "workspace" and variants[0].layer_mse == {1: 0.3, 2: 0.4}


def test_cli_writes_table_of_what_differs_and_a_plot(tmp_path):
    src = tmp_path / "exps.json"
    src.write_text(json.dumps(_exp_show()))
    out, plot = tmp_path / "ablations.md", tmp_path / "plots" / "mse.png"
    result = CliRunner().invoke(app, ["--exp-json", str(src), "--out", str(out), "--plot", str(plot)])
    assert result.exit_code == 0, result.output
    table = out.read_text()
    header = next(line for line in table.splitlines() if line.startswith("| variant"))
    # the varied params are columns; bookkeeping params (layer list, model paths) are not
    assert "distill.input" in header and "distill.lr" in header
    assert "distill.layers" not in header and "eval.models" not in header
    row = next(line for line in table.splitlines() if line.startswith("| teacher-forced"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    # input, lr, layers, mean stage MSE, last-layer stage MSE, last-layer free-running MSE
    assert cells[1:7] == ["teacher", "0.001", "2", "0.5", "0.6", "1.5"]
    assert plot.stat().st_size > 1000 and plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_only_selects_and_orders_variants_and_names_a_missing_one(tmp_path):
    src = tmp_path / "exps.json"
    src.write_text(json.dumps(_exp_show()))
    out = tmp_path / "a.md"
    ok = CliRunner().invoke(app, ["--exp-json", str(src), "--out", str(out), "--plot", str(tmp_path / "p.png"),
                                  "--only", "lr-3e-3", "--only", "main"])
    assert ok.exit_code == 0, ok.output
    rows = [line.split("|")[1].strip() for line in out.read_text().splitlines() if line.startswith("| ") and "variant" not in line]
    assert rows == ["lr-3e-3", "main"]
    bad = CliRunner().invoke(app, ["--exp-json", str(src), "--out", str(out), "--only", "nope"])
    assert bad.exit_code == 1 and "nope" in bad.output


def test_cli_without_any_metrics_is_a_one_line_error(tmp_path):
    src = tmp_path / "exps.json"
    src.write_text(json.dumps([{"rev": "workspace", "data": {"metrics": {}, "params": {}}}]))
    result = CliRunner().invoke(app, ["--exp-json", str(src), "--out", str(tmp_path / "a.md")])
    assert result.exit_code == 1
    assert "no experiment with metrics" in result.output
    assert not (tmp_path / "a.md").exists()


def test_curves_reads_dvclive_tsvs_and_refuses_an_empty_run(tmp_path):
    from tools.curves import app as curves
    from tools.curves import read_tsv

    live = tmp_path / "reports" / "dvclive"
    for name, column in (("distill_01", "train_mse"), ("distill_02", "train_mse"), ("finetune", "train_loss")):
        d = live / name / "plots" / "metrics"
        d.mkdir(parents=True)
        (d / f"{column}.tsv").write_text(f"step\t{column}\n0\t4.0\n5\t2.5\n9\t1.5\n")
    assert read_tsv(live / "distill_02/plots/metrics/train_mse.tsv", "train_mse") == [(0, 4.0), (5, 2.5), (9, 1.5)]
    out = tmp_path / "curves.png"
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"paths": {"reports": str(tmp_path / "reports")}}))
    result = CliRunner().invoke(curves, ["--params", str(params), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "2 distilled layers, finetune" in result.output
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    params.write_text(yaml.safe_dump({"paths": {"reports": str(tmp_path / "none")}}))
    empty = CliRunner().invoke(curves, ["--params", str(params), "--out", str(tmp_path / "x.png")])
    assert empty.exit_code == 1 and "no DVCLive training logs" in empty.output
    assert not (tmp_path / "x.png").exists()


def _recipe(rev, name, target, ppls, nmse, seconds):
    """An exp-show entry of a whole pipeline run: eval metrics, per-layer metrics, timings."""
    metrics = {f"reports/metrics/distill/layer_{i + 1:02d}.json":
               {"data": {"val_mse": 9.0, "val_nmse": n / 4, "target": target, "val_layer_mse": 1.0, "val_layer_nmse": n}}
               for i, n in enumerate(nmse)}
    metrics["data/eval/metrics.json"] = {"data": {f"ppl/{ds}/{m}": v for (ds, m), v in ppls.items()}}
    metrics.update({f"reports/timings/{stage}.json": {"data": {"seconds": s}} for stage, s in seconds.items()})
    params = {"params.yaml": {"data": {"distill": {"target": target, "layers": {"01": {"prev": "00"}}},
                                       "pretrain": {"lr": 1e-3}}}}
    return {"rev": rev, "name": name, "data": {"rev": rev, "metrics": metrics, "params": params}}


def test_recipes_table_compares_students_with_the_teacher_and_from_scratch(tmp_path):
    from tools.recipes import app as recipes

    ppl = {("owt", "teacher"): 30.0, ("wikitext", "teacher"): 25.0, ("owt", "pretrained"): 2000.0}
    base = _recipe("a" * 40, "paper", "layer_output",
                   {**ppl, ("owt", "distilled"): 3000.0, ("owt", "finetuned"): 1500.0, ("wikitext", "finetuned"): 900.0},
                   [0.5, 4.7], {"distill_01": 10.0, "distill_02": 12.0, "finetune": 40.0, "pretrain": 50.0})
    base["experiments"] = [{"name": "attn", "executor": None, "revs": [_recipe(
        "b" * 40, "attn", "mixer_output",
        {**ppl, ("owt", "distilled"): 600.0, ("owt", "finetuned"): 90.0, ("wikitext", "finetuned"): 100.0},
        [0.2, 0.4], {"distill_01": 5.0, "distill_02": 6.0, "finetune": 40.0, "pretrain": 45.0})]}]
    attn_eval = base["experiments"][0]["revs"][0]["data"]["metrics"]["data/eval/metrics.json"]["data"]
    attn_eval.update({"pos_ratio/0-256/finetuned": 3.5, "pos_ratio/4K-8K/finetuned": 4.25,  # sorted as text, as
                      "pos_ratio/512-1K/finetuned": 5.0,  # `dvc exp show` writes them: 512-1K is not the last bucket
                      "passkey/1024/finetuned": 1.0, "passkey/8192/finetuned": 0.4})
    base["experiments"][0]["revs"][0]["data"]["metrics"]["reports/metrics/recurrent.json"] = {
        "data": {"state_bytes_per_sequence": 3 * 2**20, "ppl_owt_recurrent": 91.0}}
    src = tmp_path / "exps.json"
    src.write_text(json.dumps([{"rev": "workspace", "name": None, "data": {"metrics": {}, "params": {}}}, base]))
    out, plot = tmp_path / "recipes.md", tmp_path / "plots" / "recipes.png"
    result = CliRunner().invoke(recipes, ["--exp-json", str(src), "--out", str(out), "--plot", str(plot)])
    assert result.exit_code == 0, result.output
    text = out.read_text()
    header = next(line for line in text.splitlines() if line.startswith("| recipe"))
    assert "distill.target" in header and "pretrain.lr" not in header  # what differs, not bookkeeping
    attn = [c.strip() for c in next(line for line in text.splitlines() if line.startswith("| attn")).strip("|").split("|")]
    assert attn[1] == "mixer_output"
    assert attn[2] == "600.0 / 90.0 / 2,000.0"  # distilled / fine-tuned / from scratch
    assert attn[3] == "3.00x" and attn[4] == "100.0 (4.00x)" and attn[5] == "0.30"
    assert attn[6] == "0.30 / 0.40 / 0" and attn[10] == "3.0" and attn[11] == "11 / 40 / 45"
    assert attn[7] == "0.08"  # attention-output nMSE (0.2/4 + 0.4/4) / 2 = 0.075: the mixer_output target's own val_nmse, mean over layers
    assert attn[8] == "3.5x / 4.2x (4K-8K)" and attn[9] == "0.40 @ 8192"  # long context: last bucket, longest passkey
    paper = [c.strip() for c in next(line for line in text.splitlines() if line.startswith("| paper")).strip("|").split("|")]
    assert paper[5] == "1.50" and paper[6] == "2.60 / 4.70 / 1"  # distilled worse than from scratch; one layer >= 1
    assert paper[7] == "–"  # layer_output target: no attention-output error
    assert paper[8] == "–" and paper[9] == "–"  # a run from before the position curve
    assert paper[10] == "–"  # no recurrent student
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
