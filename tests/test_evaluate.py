"""Evaluation: windowed perplexity against a hand computation, offline lm-eval tasks, report, CLI."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import yaml
from conftest import tiny_neox_config

from hyena.evaluate import harness
from hyena.evaluate.perplexity import plan_windows, stream_perplexity
from hyena.evaluate.report import PAPER_PPL, flat_metrics, render_report


def _stream(n: int, vocab: int = 50304, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, vocab, size=n).astype(np.int32)


@torch.no_grad()
def _nll_of(model, tokens: np.ndarray, start: int, t: int) -> float:
    """-log p(x_t | x_start .. x_{t-1}) from a forward pass over exactly that context."""
    ids = torch.from_numpy(tokens[start : t + 1].astype(np.int64))[None]  # (1, t-start+1)
    logp = torch.log_softmax(model(input_ids=ids).logits[0, -2].float(), dim=-1)
    return -float(logp[int(tokens[t])])


def test_windows_score_every_token_once_and_drop_the_tail():
    wins = plan_windows(100, context=16)
    assert [w.begin for w in wins] == list(range(0, 96, 16))  # 6 full windows, tail of 4 dropped
    assert all(w.n_scored == 15 for w in wins)
    slide = plan_windows(100, context=16, stride=4)
    scored = [p for w in slide for p in range(w.end - w.n_scored, w.end)]
    assert len(scored) == len(set(scored))  # no token twice
    assert scored == list(range(1, slide[-1].end))  # contiguous from the first predictable token
    assert len(plan_windows(100, 16, 4, max_windows=3)) == 3
    assert plan_windows(10, 16) == []
    with pytest.raises(ValueError, match="stride"):
        plan_windows(100, 16, stride=17)


def test_perplexity_equals_hand_computation(tiny_neox):
    tokens = _stream(53)
    res = stream_perplexity(tiny_neox, tokens, context=12, batch_size=3)
    nll = [_nll_of(tiny_neox, tokens, b, t) for b in range(0, 48, 12) for t in range(b + 1, b + 12)]
    assert res.n_windows == 4 and res.n_scored == len(nll) == 44
    assert res.ppl == pytest.approx(math.exp(np.mean(nll)), rel=1e-4)
    assert "first token of each window is unscored" in res.method


def test_sliding_perplexity_equals_hand_computation(tiny_neox):
    tokens = _stream(40, seed=1)
    context, stride = 12, 4
    res = stream_perplexity(tiny_neox, tokens, context=context, stride=stride, batch_size=2)
    # HF recipe by hand: window starts 0, 4, ...; the first scores 1..11, later ones their last 4.
    nll = [_nll_of(tiny_neox, tokens, 0, t) for t in range(1, context)]
    for begin in range(stride, len(tokens) - context + 1, stride):
        nll += [_nll_of(tiny_neox, tokens, begin, t) for t in range(begin + context - stride, begin + context)]
    assert res.n_scored == len(nll) == 11 + 7 * 4
    assert res.ppl == pytest.approx(math.exp(np.mean(nll)), rel=1e-4)
    assert res.ppl != pytest.approx(stream_perplexity(tiny_neox, tokens, context=context).ppl, rel=1e-3)


def test_perplexity_rejects_tokens_outside_the_vocab(tiny_neox):
    with pytest.raises(ValueError, match="vocab"):
        stream_perplexity(tiny_neox, _stream(20, vocab=60000, seed=2) + 50304, context=8)


def test_lm_eval_offline_tasks_on_a_tiny_model(tiny_neox, pythia_tokenizer, shared):
    res = harness.run_tasks(tiny_neox, pythia_tokenizer, list(harness.TASKS), source="local",
                            data_dir=shared / "eval", limit=3, batch_size=4)
    assert set(res) == set(harness.TASKS)
    for task, r in res.items():
        assert 0.0 <= r["acc"] <= 1.0, task
        assert r["acc_stderr"] is not None and r["n"] == 3
    assert {t for t, r in res.items() if "acc_norm" in r} == {"arc_challenge", "arc_easy", "logiqa", "piqa", "sciq"}


ANIMALS = [  # a user's own multiple-choice task: question, choices, index of the right one
    {"question": "Which animal barks?", "choices": ["dog", "cat", "fish"], "gold": 0},
    {"question": "Which animal meows?", "choices": ["cow", "cat"], "gold": 1},
    {"question": "Which animal laughs at night?", "choices": ["owl", "hyena", "horse"], "gold": 1},
    {"question": "Which animal swims?", "choices": ["fish", "bird"], "gold": 0},
]


def write_user_task(directory, name: str = "animal_sounds"):
    """A task YAML as a user would write it (lm-eval's offline json loader), over a jsonl file."""
    directory.mkdir(parents=True, exist_ok=True)
    data = directory / "animals.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in ANIMALS))
    (directory / f"{name}.yaml").write_text(yaml.safe_dump({
        "task": name, "dataset_path": "json", "dataset_kwargs": {"data_files": {"test": str(data)}},
        "output_type": "multiple_choice", "test_split": "test",
        "doc_to_text": "Question: {{question}}\nAnswer:", "doc_to_choice": "choices", "doc_to_target": "gold",
        "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}],
        "metadata": {"version": 1.0}}))
    return directory


@torch.no_grad()
def _choice_loglik(model, tokenizer, context: str, continuation: str) -> float:
    """log p(continuation | context), tokenised the way lm-eval's HFLM does (the whole string,
    split where the context's tokens end)."""
    whole = tokenizer(context + continuation, add_special_tokens=False).input_ids
    n_ctx = len(tokenizer(context, add_special_tokens=False).input_ids)
    logp = torch.log_softmax(model(input_ids=torch.tensor([whole])).logits[0].float(), dim=-1)
    return sum(float(logp[t - 1, whole[t]]) for t in range(n_ctx, len(whole)))


def test_user_task_yamls_run_next_to_the_shipped_tasks(tmp_path, tiny_neox, pythia_tokenizer, shared):
    user = write_user_task(tmp_path / "my_tasks")
    assert harness.user_tasks(user) == ["animal_sounds"]
    res = harness.run_tasks(tiny_neox, pythia_tokenizer, ["wsc"], source="local", data_dir=shared / "eval",
                            limit=4, batch_size=4, include_path=user, include_tasks=["animal_sounds"])
    assert set(res) == {"wsc", "animal_sounds"} and res["animal_sounds"]["n"] == 4
    right = [max(range(len(r["choices"])), key=lambda i, r=r: _choice_loglik(
        tiny_neox, pythia_tokenizer, f"Question: {r['question']}\nAnswer:", " " + r["choices"][i])) == r["gold"]
        for r in ANIMALS]
    assert res["animal_sounds"]["acc"] == pytest.approx(sum(right) / len(right))
    with pytest.raises(ValueError, match=r"eval.include_tasks: nope not defined in .*it defines: animal_sounds"):
        harness.user_tasks(user, ["nope"])
    with pytest.raises(FileNotFoundError, match="eval.include_path .*missing is not a directory"):
        harness.user_tasks(tmp_path / "missing")
    with pytest.raises(ValueError, match="clash with the shipped task keys"):
        harness.user_tasks(write_user_task(tmp_path / "clash", "piqa"))


def test_missing_task_data_names_task_and_path(tmp_path, shared):
    (tmp_path / "llm-foundry").mkdir()
    with pytest.raises(FileNotFoundError, match=r"eval task 'piqa': data file not found: .*llm-foundry/piqa\.jsonl"):
        with harness.prepared_tasks(tmp_path, ["piqa"]):
            pass
    with harness.prepared_tasks(shared / "eval", ["arc_easy", "wsc"]) as d:  # absolute paths substituted
        paths = [p for f in d.glob("*.yaml") for p in harness.task_data_files(f)]
        assert len(paths) == 2 and all(p.is_absolute() and p.is_file() for p in paths)


def _results() -> dict:
    def ppl(v):
        return {"ppl": v, "method": "token-level exp(mean NLL) over 10 scored tokens"}

    return {
        "settings": {"context": 1024, "datasets": ["wikitext", "owt"], "long_contexts": [2048],
                     "long_context_datasets": ["wikitext"], "tasks": ["arc_easy", "wsc"], "task_source": "local",
                     "limit": 5, "dataset_sources": {"owt": "OWT val"}},
        "models": {
            "teacher": {"path": "t", "max_positions": 2048,
                        "ppl": {"wikitext": {"1024": ppl(20.0), "2048": ppl(25.0)}, "owt": {"1024": ppl(10.0)}},
                        "tasks": {"arc_easy": {"acc": 0.5, "acc_stderr": 0.1, "acc_norm": 0.4, "acc_norm_stderr": 0.1},
                                  "wsc": {"acc": 0.3, "acc_stderr": 0.1}}},
            "finetuned": {"path": "s", "max_positions": 1024,
                          "ppl": {"wikitext": {"1024": ppl(40.0), "2048": {"na": "ValueError: exceeds max_len"}},
                                  "owt": {"1024": ppl(30.0)}},
                          "tasks": {"arc_easy": {"acc": 0.25, "acc_stderr": 0.1}, "wsc": {"acc": 0.6, "acc_stderr": 0.1}}},
        },
    }


def test_report_tables_and_flat_metrics():
    results = _results()
    ref = {"arc_easy": {"acc": 0.374, "acc_stderr": 0.01}, "wsc": {"acc": 0.365, "acc_stderr": 0.05}}
    results["models"]["broken"] = {"path": "b", "ppl": {}, "tasks": {}, "tasks_na": "AssertionError: x"}
    md = render_report(results, ref)
    table1 = md.split("## Table 1")[1].split("##")[0]
    assert "| model | WikiText | OWT | WikiText / teacher | OWT / teacher | paper WikiText | paper OWT" in table1
    row = next(line for line in table1.splitlines() if line.startswith("| finetuned"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1:5] == ["40.0", "30.0", "2.00", "3.00"]
    assert cells[5:7] == [str(PAPER_PPL["finetuned"]["wikitext"]), str(PAPER_PPL["finetuned"]["owt"])]
    assert "n/a (ValueError: exceeds max_len)" in md
    table2 = md.split("## Table 2")[1].split("##")[0]
    assert "paper Pythia-70M" in table2 and "Pythia-70M lm-eval reference" in table2
    assert "0.3740" in table2 and "0.2500 ± 0.1000" in table2
    mean_row = next(line for line in table2.splitlines() if line.startswith("| mean acc |"))
    assert "0.4000" in mean_row and "0.4250" in mean_row
    assert "n/a (AssertionError: x)" in table2 and "| – | – |" in table1
    assert "word-level" in md and "support paragraph" in md
    flat = flat_metrics(results)
    assert flat["ppl/owt/finetuned"] == 30.0 and flat["ppl_ratio/owt/finetuned"] == 3.0
    assert flat["ppl_ctx2048/wikitext/teacher"] == 25.0 and "ppl_ctx2048/wikitext/finetuned" not in flat
    assert flat["acc/wsc/finetuned"] == 0.6 and flat["acc_norm/arc_easy/teacher"] == 0.4


@pytest.fixture
def tiny_model_dirs(tmp_path, pythia_dir):
    """A tiny GPT-NeoX with a tokenizer and a tiny GPT-2 with 32 absolute positions and none."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, GPT2Config

    torch.manual_seed(0)
    neox = tmp_path / "neox"
    AutoModelForCausalLM.from_config(tiny_neox_config()).save_pretrained(neox)
    AutoTokenizer.from_pretrained(str(pythia_dir)).save_pretrained(neox)
    gpt2 = tmp_path / "gpt2"
    cfg = GPT2Config(vocab_size=50304, n_positions=32, n_embd=32, n_layer=1, n_head=2)
    AutoModelForCausalLM.from_config(cfg).save_pretrained(gpt2)
    return neox, gpt2


def test_cli_writes_outputs_and_records_unrunnable_contexts(tmp_path, tiny_model_dirs, pythia_dir, shared):
    from typer.testing import CliRunner

    from hyena.core.io import file_sha256
    from hyena.data.tokens import content_hash
    from pipeline.evaluate import app

    neox, gpt2 = tiny_model_dirs
    tokens = tmp_path / "tokens"
    tokens.mkdir()
    np.save(tokens / "val.npy", _stream(4 * 24).reshape(4, 24))
    manifest = {"splits": {"val": {"sha256": file_sha256(tokens / "val.npy"), "shape": [4, 24]}}}
    (tokens / "manifest.json").write_text(json.dumps({**manifest, "content_hash": content_hash(manifest)}))
    wiki = tmp_path / "wiki.test.raw"  # the first 20K characters keep tokenisation fast
    wiki.write_text((shared / "data/wikitext-2-raw/wiki.test.raw").read_text()[:20_000])
    bodies = ["Hyenas live in clans.", "   ", "A clan defends its territory at night, calling loudly."]
    domain = tmp_path / "domain.jsonl"  # a user's own corpus, text under another field
    domain.write_text("".join(json.dumps({"body": b}) + "\n" for b in bodies))
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"paths": {"teacher": str(pythia_dir), "tokens": str(tokens)}, "eval": {
        "models": {"teacher": str(neox), "small": str(gpt2)}, "context": 16, "max_windows": 2,
        "datasets": {"wikitext": str(wiki), "owt": "tokenize:val", "domain": {"source": str(domain), "text_field": "body"}},
        "long_contexts": [32, 64, 128], "long_context_datasets": ["wikitext", "owt", "domain"], "long_max_windows": 1,
        "positions": {"source": str(wiki), "context": 64, "windows": 2, "first_bucket": 8},
        "passkey": {"lengths": [128], "trials": 2},
        "tasks": ["wsc"], "limit": 2, "task_data_dir": str(shared / "eval"),
        "include_path": str(write_user_task(tmp_path / "my_tasks")),
        "reference": str(shared / "eval/pythia_reference_results/pythia-70m_zero-shot_step143000.json")}},
        sort_keys=False))
    out = tmp_path / "eval"
    result = CliRunner().invoke(app, ["--params", str(params), "--out", str(out)])
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"ppl/wikitext/teacher", "ppl/owt/small", "ppl_ctx64/wikitext/teacher", "acc/wsc/small",
            "acc/animal_sounds/teacher"} <= set(metrics)
    assert metrics["acc/mean/teacher"] == metrics["acc/wsc/teacher"]  # the user's task stays out of the mean
    details = json.loads((out / "results.json").read_text())
    small = details["models"]["small"]
    assert "na" in small["ppl"]["wikitext"]["64"]  # 32 absolute positions cannot run 64 tokens
    assert "na" in small["ppl"]["owt"]["64"] and "ppl" in small["ppl"]["owt"]["32"]
    assert details["models"]["teacher"]["ppl"]["owt"]["128"] == {"na": "needs 128 tokens, the data has 96"}
    # transformers would build an empty tokenizer from the bare dir: it must fall back to paths.teacher
    assert small["tokenizer"] == str(pythia_dir) and details["models"]["teacher"]["tokenizer"] == str(neox)
    assert (out / "ppl.png").stat().st_size > 0 and (out / "ppl_vs_context.png").stat().st_size > 0
    assert (out / "ppl_by_position.png").stat().st_size > 0
    # the position curve: the teacher has one, the 32-position model cannot take 64-token windows
    assert [b["label"] for b in details["models"]["teacher"]["positions"]["buckets"]] == ["0-8", "8-16", "16-32", "32-64"]
    assert "na" in small["positions"] and "pos_ratio/32-64/small" not in metrics and "pos_ppl/32-64/teacher" in metrics
    assert details["models"]["teacher"]["passkey"]["128"]["trials"] == 2 and "na" in small["passkey"]["128"]
    report = (out / "report.md").read_text()
    table1 = report.split("## Table 1")[1].split("##")[0]
    assert "| model | WikiText | OWT | domain | WikiText / teacher | OWT / teacher | domain / teacher | paper WikiText" in table1
    assert "paper domain" not in table1 and "**domain**" in report  # and on the long-context curve
    table2 = report.split("## Table 2")[1].split("##")[0]
    rows = [line.split("|")[1].strip() for line in table2.splitlines() if line.startswith("| ")][1:]
    assert rows == ["wsc", "mean acc", "mean acc / teacher", "animal_sounds (yours)", "passkey @ 128 tokens"]
    assert "## Perplexity by position in long documents" in report
    # the user's corpus: its non-empty documents joined by a blank line, in the model's own tokens
    from transformers import AutoModelForCausalLM, AutoTokenizer

    stream = AutoTokenizer.from_pretrained(neox)(bodies[0] + "\n\n" + bodies[2], add_special_tokens=False)["input_ids"]
    want = stream_perplexity(AutoModelForCausalLM.from_pretrained(neox).eval(), stream, context=16, max_windows=2)
    assert metrics["ppl/domain/teacher"] == pytest.approx(want.ppl, rel=1e-4)
    assert details["models"]["teacher"]["ppl"]["domain"]["16"]["n_scored"] == want.n_scored
    assert str(domain) in details["settings"]["dataset_sources"]["domain"]


def test_cli_bad_input_is_one_line_and_writes_nothing(tmp_path, pythia_dir):
    from typer.testing import CliRunner

    from pipeline.evaluate import app

    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"paths": {"tokens": str(tmp_path / "none")},
                                      "eval": {"models": {"m": str(pythia_dir)}, "tasks": [], "reference": ""}}))
    result = CliRunner().invoke(app, ["--params", str(params), "--out", str(tmp_path / "eval")])
    assert result.exit_code == 1
    assert "OWT validation tokens not found" in result.output and len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "eval").exists()
    params.write_text(yaml.safe_dump({"eval": {"models": {"m": "x"}, "stride": 5000}}))
    result = CliRunner().invoke(app, ["--params", str(params)])
    assert result.exit_code == 1 and "eval.stride" in result.output


# --- eval.datasets: sources -------------------------------------------------------------------


def test_dataset_sources_read_like_the_tokenize_stage(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from hyena.evaluate.streams import DatasetError, DatasetSource, read_text

    raw = tmp_path / "book.txt"
    raw.write_text(" = Title = \n\nFirst paragraph.\n\n = Next = \nMore.\n")
    assert read_text("book", DatasetSource(str(raw))) == raw.read_text()  # a text file stands as it is
    (tmp_path / "shards").mkdir()
    for i in range(2):
        (tmp_path / "shards" / f"{i}.jsonl").write_text(json.dumps({"text": f"doc {i}a"}) + "\n" + json.dumps({"text": f"doc {i}b"}) + "\n")
    glob = DatasetSource(str(tmp_path / "shards" / "*.jsonl"), max_documents=3)
    assert read_text("shards", glob) == "doc 0a\n\ndoc 0b\n\ndoc 1a"  # files in order, capped
    pq.write_table(pa.table({"content": ["p one", "", "p two"]}), tmp_path / "t.parquet")
    assert read_text("pq", DatasetSource(str(tmp_path / "t.parquet"), text_field="content")) == "p one\n\np two"
    with pytest.raises(DatasetError, match=r"^eval\.datasets\.pq: .*no 'text' column .*set eval\.datasets\.pq\.text_field"):
        read_text("pq", DatasetSource(str(tmp_path / "t.parquet")))
    with pytest.raises(DatasetError, match=r"^eval\.datasets\.pg19: corpus file not found: .*fix eval\.datasets\.pg19\.source"):
        read_text("pg19", DatasetSource(str(tmp_path / "pg19" / "test.txt")))
    with pytest.raises(DatasetError, match=r"eval\.datasets\.none: corpus glob .* matched no files: fix eval\.datasets\.none\.source"):
        read_text("none", DatasetSource(str(tmp_path / "*.md")))


def test_dataset_names_and_curve_are_checked(tmp_path):
    from hyena.core.config import ConfigError, load
    from hyena.evaluate.runner import EvalConfig

    cfg = load(EvalConfig, {"datasets": {"pg19": "data/pg19/*.txt"}, "long_context_datasets": ["pg19"]}, "eval")
    assert cfg.datasets["pg19"].source == "data/pg19/*.txt" and cfg.datasets["pg19"].hf_split == "test"
    assert list(EvalConfig().datasets) == ["wikitext", "owt"] and EvalConfig().datasets["owt"].tokenized
    with pytest.raises(ConfigError, match="eval.long_context_datasets: pg19 not in eval.datasets"):
        load(EvalConfig, {"long_context_datasets": ["pg19"]}, "eval")
    with pytest.raises(ConfigError, match=r"eval.datasets.pg19: unknown key\(s\) split"):
        load(EvalConfig, {"datasets": {"pg19": {"source": "x", "split": "test"}}}, "eval")
    with pytest.raises(ConfigError, match="name 'a/b'"):
        load(EvalConfig, {"datasets": {"a/b": "x.txt"}, "long_context_datasets": []}, "eval")


def test_cli_names_a_dataset_that_cannot_be_read(tmp_path, pythia_dir):
    from typer.testing import CliRunner

    from pipeline.evaluate import app

    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"eval": {
        "models": {"m": str(pythia_dir)}, "tasks": [], "reference": "", "long_context_datasets": [],
        "datasets": {"mine": {"source": str(tmp_path / "mine.jsonl")}}}}))
    (tmp_path / "mine.jsonl").write_text(json.dumps({"content": "x"}) + "\n")
    result = CliRunner().invoke(app, ["--params", str(params), "--out", str(tmp_path / "eval")])
    assert result.exit_code == 1 and len(result.output.strip().splitlines()) == 1
    assert "eval.datasets.mine" in result.output and "set eval.datasets.mine.text_field" in result.output
    assert not (tmp_path / "eval").exists()


def test_local_inputs_missing_from_the_eval_deps_are_named(tmp_path):
    from hyena.core.config import load
    from hyena.evaluate.runner import EvalConfig
    from pipeline.evaluate import untracked_inputs

    corpora = tmp_path / "corpora"
    corpora.mkdir()
    for f in ("a.txt", "b.txt", "c.txt"):
        (corpora / f).write_text("x")
    cfg = load(EvalConfig, {"datasets": {"a": str(corpora / "a.txt"), "glob": str(corpora / "*.txt"),
                                         "owt": "tokenize:val", "hub": "someone/corpus"},
                            "long_context_datasets": [], "include_path": str(tmp_path / "my_tasks"),
                            "positions": {"source": str(corpora / "b.txt")}}, "eval")
    dvc_yaml = tmp_path / "dvc.yaml"
    dvc_yaml.write_text(yaml.safe_dump({"stages": {"eval": {"cmd": "x", "deps": [
        "${paths.tokens}", str(corpora / "a.txt"), str(corpora / "sub"), str(tmp_path / "my_tasks")]}}}))
    # b.txt and c.txt are not listed: the glob and the position curve's long documents
    assert untracked_inputs(cfg, dvc_yaml) == ["eval.datasets.glob", "eval.positions.source"]
    dvc_yaml.write_text(yaml.safe_dump({"stages": {"eval": {"cmd": "x", "deps": [str(corpora)]}}}))
    assert untracked_inputs(cfg, dvc_yaml) == ["eval.include_path"]
    assert untracked_inputs(cfg, tmp_path / "no_dvc.yaml") == []
