"""Every bad input a demanding user tried (the probe behind this project's robustness issue, and
more) ends in exactly one line naming the key or file, exit code 1, and no output created or
modified: wrong values, inconsistent params, inputs from elsewhere, damaged files, output paths
that name someone else's directory, a full disk.

Each case runs one stage in this process against the small project of conftest.py (built once):
its params are the project's with some keys changed, and damaged inputs are copies under the
case's tmp_path, so the project itself must come out byte for byte unchanged.
"""

from __future__ import annotations

import copy
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import run_stage


@dataclass
class Case:
    args: list[str]  # the hyena-distill command
    words: list[str]  # each must appear in the one error line
    params: dict = field(default_factory=dict)  # overrides, merged into the project's params
    prepare: Callable | None = None  # (project, tmp_path, params) -> None: damaged copies, foreign dirs
    raw_params: str | None = None  # a params file that is not even a valid mapping


def merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in over.items():
        out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


# ---- preparations: each writes only under tmp_path and points params at it ----------------------


def copied(project: Path, tmp_path: Path, params: dict, key: str) -> Path:
    """A copy of the artifact paths.<key> under tmp_path, with params pointing at it."""
    src = Path(params["paths"][key])
    dst = tmp_path / src.name
    shutil.copytree(src, dst)
    params["paths"][key] = str(dst)
    return dst


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def chunk(store: Path, array: str, index: int) -> Path:
    return store / array / "c" / str(index) / "0" / "0"


def delete_teacher_chunk(project, tmp_path, params):
    chunk(copied(project, tmp_path, params, "activations"), "train/layer_01", 1).unlink()


def nan_in_teacher_chunk(project, tmp_path, params):
    import zarr

    arr = zarr.open_array(str(copied(project, tmp_path, params, "activations") / "train/layer_01"), mode="r+")
    arr[5, 3, 7] = np.nan


def truncate_teacher_chunk(project, tmp_path, params):
    truncate(chunk(copied(project, tmp_path, params, "activations"), "train/layer_00", 0))


def delete_student_chunk(project, tmp_path, params):
    chunk(copied(project, tmp_path, params, "students") / "layer_01/acts.zarr", "train", 0).unlink()


def truncate_student(name: str):
    def prepare(project, tmp_path, params):
        truncate(copied(project, tmp_path, params, "students") / name / "model.safetensors")
    return prepare


def truncated_finetuned_for_eval(filename: str):
    """A prepare step: eval reads a copy of the fine-tuned student whose `filename` is truncated."""
    def prepare(project, tmp_path, params):
        dst = tmp_path / "finetuned"
        shutil.copytree(Path(params["paths"]["students"]) / "finetuned", dst)
        truncate(dst / filename)
        params["eval"]["models"] = {"finetuned": str(dst)}
    return prepare


def recurrent_fitted_on_16_taps(project, tmp_path, params):
    """A recurrent student whose config says its filters were fitted on 16 taps."""
    dst = tmp_path / "recurrent"
    shutil.copytree(Path(params["paths"]["students"]) / "recurrent", dst)
    config = json.loads((dst / "config.json").read_text())
    config["modal"]["fit_len"] = 16
    (dst / "config.json").write_text(json.dumps(config))
    params["eval"]["models"] = {"recurrent": str(dst)}


def empty_students(project, tmp_path, params):
    params["paths"]["students"] = str(tmp_path / "students")


def other_tokenizer_tokens(project, tmp_path, params):
    """Token rows of the same corpus made with another tokenizer: every id is below the
    teacher's vocabulary size, so only the tokenizer identity can tell."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from hyena.data.corpus import TokenizeConfig
    from hyena.data.tokens import build_token_dataset

    corpus = params["tokenize"]["corpus"]
    texts = [json.loads(line)["text"] for line in Path(corpus).read_text().splitlines()[:40]]
    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(texts, trainers.WordLevelTrainer(vocab_size=400, special_tokens=["[UNK]", "</s>"]))
    other = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", eos_token="</s>")
    build_token_dataset(TokenizeConfig(corpus=corpus, max_documents=40, context=32, val_fraction=0.1),
                        other, "word-level", tmp_path / "tokens")
    params["paths"]["tokens"] = str(tmp_path / "tokens")


def bert_source(project, tmp_path, params):
    from transformers import BertConfig

    BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64).save_pretrained(tmp_path / "bert")
    params["teacher"]["source"] = str(tmp_path / "bert")


def bert_as_teacher_dir(project, tmp_path, params):
    bert_source(project, tmp_path, params)
    params["paths"]["teacher"] = str(tmp_path / "bert")


def config_only_teacher(project, tmp_path, params):
    params["teacher"]["random_init"] = False  # the source dir has a config and a tokenizer, no weights


SMOLLM_GGUF = "models/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf"


def truncated_gguf(tmp_path: Path) -> Path:
    """The first half of the shared SmolLM2 GGUF: a download cut short."""
    from conftest import SHARED

    src, dst = SHARED / SMOLLM_GGUF, tmp_path / "SmolLM2-135M-Instruct.Q4_1.gguf"
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        fout.write(fin.read(src.stat().st_size // 2))
    return dst


def truncated_gguf_teacher(project, tmp_path, params):
    params["teacher"].update(source=str(truncated_gguf(tmp_path)), random_init=False)


def missing_layer(key: str):
    """data/students/layer_<key> is gone (deleted by hand, or its stage never ran)."""
    def prepare(project, tmp_path, params):
        shutil.rmtree(copied(project, tmp_path, params, "students") / f"layer_{key}")
    return prepare


def broken_config(name: str):
    """students/<name>/config.json cut short (a copy interrupted mid-write)."""
    def prepare(project, tmp_path, params):
        students = copied(project, tmp_path, params, "students")
        truncate(students / name / "config.json")
    return prepare


def users_own(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "thesis.tex").write_text("years of work\n")
    return path


def user_dir(key: str):
    """paths.<key> names a directory of the user's."""
    def prepare(project, tmp_path, params):
        params["paths"][key] = str(users_own(tmp_path / "mine"))
    return prepare


def user_dir_as_distilled(project, tmp_path, params):
    students = copied(project, tmp_path, params, "students")
    shutil.rmtree(students / "distilled")
    users_own(students / "distilled")


def other_stage_output(project, tmp_path, params):
    """students/finetuned holds what assemble wrote: finetune must not replace it."""
    students = copied(project, tmp_path, params, "students")
    shutil.rmtree(students / "finetuned")
    shutil.copytree(students / "distilled", students / "finetuned")


CASES: dict[str, Case] = {
    # ---- values a config refuses (type, range, unknown key, malformed file)
    "distill.batch_size -4": Case(["distill", "--layer", "01"], ["distill.batch_size", ">= 1"], {"distill": {"batch_size": -4}}),
    "distill.batch_size 0": Case(["distill", "--layer", "01"], ["distill.batch_size"], {"distill": {"batch_size": 0}}),
    "distill.lr 'fast'": Case(["distill", "--layer", "01"], ["distill.lr", "number"], {"distill": {"lr": "fast"}}),
    "distill.epochs -1": Case(["distill", "--layer", "01"], ["distill.epochs"], {"distill": {"epochs": -1}}),
    "distill --layer 09": Case(["distill", "--layer", "09"], ["distill.layers", "09"]),
    "finetune.batch_size -4": Case(["finetune"], ["finetune.batch_size"], {"finetune": {"batch_size": -4}}),
    "finetune.batch_size 0": Case(["finetune"], ["finetune.batch_size"], {"finetune": {"batch_size": 0}}),
    "finetune.micro_batch_size -2": Case(["finetune"], ["finetune.micro_batch_size"], {"finetune": {"micro_batch_size": -2}}),
    "finetune.epochs 0": Case(["finetune"], ["finetune.epochs"], {"finetune": {"epochs": 0}}),
    "finetune.epochs -1": Case(["finetune"], ["finetune.epochs"], {"finetune": {"epochs": -1}}),
    "pretrain.batch_size 0": Case(["pretrain"], ["pretrain.batch_size"], {"pretrain": {"batch_size": 0}}),
    "teacher.random_init 'yes please'": Case(["teacher"], ["teacher.random_init", "true or false"],
                                             {"teacher": {"random_init": "yes please"}}),
    "unknown key": Case(["distill", "--layer", "01"], ["distill", "learning_rate"], {"distill": {"learning_rate": 0.1}}),
    "params not valid YAML": Case(["tokenize"], ["not valid YAML"], raw_params="distill: [1, 2\n"),
    "params a top-level list": Case(["tokenize"], ["must be a mapping of sections"], raw_params="- teacher\n- tokenize\n"),
    "params scalar for a section": Case(["distill", "--layer", "01"], ["distill", "expected a mapping"], raw_params="distill: 3\n"),
    "eval --limit -3": Case(["eval", "--limit", "-3"], ["--limit", ">= 0"]),
    # ---- params that contradict each other or the data
    "distill.batch_size above the dumped sequences": Case(["distill", "--layer", "01"], ["distill.batch_size", "8"],
                                                          {"distill": {"batch_size": 16}}),
    "finetune.batch_size above the training sequences": Case(["finetune"], ["finetune.batch_size", "8"],
                                                             {"finetune": {"batch_size": 16}}),
    "pretrain.batch_size above the training sequences": Case(["pretrain"], ["pretrain.batch_size", "8"],
                                                             {"pretrain": {"batch_size": 16}}),
    "dump.train_sequences above the tokens": Case(["dump-activations"], ["dump.train_sequences"],
                                                  {"dump": {"train_sequences": 100_000}}),
    "recurrent.fit_len shorter than recurrent.context": Case(["distill-recurrent"], ["recurrent.fit_len", "recurrent.context"],
                                                              {"recurrent": {"fit_len": 16}}),
    "recurrent.fit_len above the student's max_len": Case(["distill-recurrent"], ["recurrent.fit_len", "max_len"],
                                                           {"recurrent": {"fit_len": 128, "context": 32}}),
    "student.hyena.max_len below the token context": Case(["init-student"], ["student.hyena.max_len", "32"],
                                                           {"student": {"hyena": {"max_len": 16}}}),
    "eval.context beyond a student's max_len": Case(["eval"], ["eval.context", "64 positions", "finetuned"],
                                                    {"eval": {"context": 128}}),
    "eval.context beyond a recurrent student's fitted taps": Case(["eval"], ["eval.context", "16 filter taps", "recurrent.fit_len"],
                                                                  prepare=recurrent_fitted_on_16_taps),
    # ---- inputs from elsewhere
    "tokens of another tokenizer -> dump": Case(["dump-activations"], ["another tokenizer", "tokens"],
                                                prepare=other_tokenizer_tokens),
    "tokens of another tokenizer -> finetune": Case(["finetune"], ["another tokenizer"], prepare=other_tokenizer_tokens),
    "tokens of another tokenizer -> pretrain": Case(["pretrain"], ["another tokenizer"], prepare=other_tokenizer_tokens),
    "tokens of another tokenizer -> distill-recurrent": Case(["distill-recurrent"], ["another tokenizer"],
                                                             prepare=other_tokenizer_tokens),
    "BERT teacher in the teacher stage": Case(["teacher"], ["unsupported teacher architecture 'bert'", "supported"],
                                              prepare=bert_source),
    "BERT teacher dir in tokenize": Case(["tokenize"], ["unsupported teacher architecture 'bert'"], prepare=bert_as_teacher_dir),
    "teacher source missing": Case(["teacher"], ["not found", "nowhere"], {"teacher": {"source": "/nowhere/model"}}),
    "teacher hub id offline": Case(["teacher"], ["hub", "local directory"], {"teacher": {"source": "EleutherAI/pythia-70m"}}),
    "config-only teacher without random_init": Case(["teacher"], ["no weights", "teacher.random_init"], prepare=config_only_teacher),
    "paths.teacher missing in tokenize": Case(["tokenize"], ["teacher not found", "paths.teacher"],
                                              {"paths": {"teacher": "/nowhere/teacher"}}),
    "input student missing -> finetune": Case(["finetune"], ["input student not found", "distilled"], prepare=empty_students),
    # ---- damaged files
    "deleted activation chunk -> distill": Case(["distill", "--layer", "01"], ["missing chunk file", "train/layer_01/c/1/0/0"],
                                                prepare=delete_teacher_chunk),
    "NaN activations -> distill": Case(["distill", "--layer", "01"], ["non-finite", "train/layer_01/c/1/0/0"],
                                       prepare=nan_in_teacher_chunk),
    "truncated activation chunk -> distill": Case(["distill", "--layer", "01"], ["unreadable chunk file", "train/layer_00/c/0/0/0"],
                                                  prepare=truncate_teacher_chunk),
    "deleted chunk of the student's outputs -> distill": Case(["distill", "--layer", "02"],
                                                              ["missing chunk file", "layer_01/acts.zarr", "rerun distill@01"],
                                                              prepare=delete_student_chunk),
    "truncated layer_00 weights -> distill": Case(["distill", "--layer", "01"], ["layer_00/model.safetensors", "truncated or corrupt"],
                                                  prepare=truncate_student("layer_00")),
    "truncated distilled weights -> finetune": Case(["finetune"], ["distilled/model.safetensors", "truncated or corrupt"],
                                                    prepare=truncate_student("distilled")),
    "truncated model weights -> eval": Case(["eval"], ["finetuned/model.safetensors", "truncated or corrupt"],
                                            prepare=truncated_finetuned_for_eval("model.safetensors")),
    "truncated GGUF as teacher.source": Case(["teacher"], ["SmolLM2-135M-Instruct.Q4_1.gguf", "truncated or not a GGUF file",
                                                           "re-download it", "teacher.source"], prepare=truncated_gguf_teacher),
    "missing layer_02 -> assemble": Case(["assemble"], ["layer_02", "not found", "rerun distill@02 (dvc repro distill@02)"],
                                         prepare=missing_layer("02")),
    "missing layer_01 -> distill 02": Case(["distill", "--layer", "02"], ["layer_01", "not found", "rerun distill@01 (dvc repro distill@01)"],
                                           prepare=missing_layer("01")),
    "missing layer_01 -> assemble": Case(["assemble"], ["layer_01/layer.safetensors", "not found", "dvc repro distill@01"],
                                         prepare=missing_layer("01")),
    "broken layer_00 config.json -> distill": Case(["distill", "--layer", "01"], ["layer_00/config.json", "not valid JSON", "damaged",
                                                                                  "rerun the init-student stage"],
                                                   prepare=broken_config("layer_00")),
    "broken distilled config.json -> finetune": Case(["finetune"], ["distilled/config.json", "damaged", "rerun the assemble stage"],
                                                     prepare=broken_config("distilled")),
    "broken finetuned config.json -> eval": Case(["eval"], ["finetuned/config.json", "damaged", "rerun the stage that writes it"],
                                                 prepare=truncated_finetuned_for_eval("config.json")),
    "inspect --verify with a truncated chunk": Case(["inspect", "--verify"], ["verify failed", "unreadable", "layer_00"],
                                                    prepare=truncate_teacher_chunk),
    # ---- output paths naming directories the stage did not write
    "paths.teacher is a user directory": Case(["teacher"], ["refusing to replace", "mine"], prepare=user_dir("teacher")),
    "paths.activations is a user directory": Case(["dump-activations"], ["refusing to replace", "mine"],
                                                  prepare=user_dir("activations")),
    "paths.tokens is a user directory": Case(["tokenize"], ["refusing to replace", "mine"], prepare=user_dir("tokens")),
    "students/distilled is a user directory": Case(["assemble"], ["refusing to replace", "distilled"],
                                                   prepare=user_dir_as_distilled),
    "students/finetuned is another stage's output": Case(["finetune"], ["refusing to replace", "output of stage assemble"],
                                                         prepare=other_stage_output),
}


def snapshot(*roots: Path) -> dict[str, tuple[int, int]]:
    """(size, mtime_ns) of every file under `roots`, and every directory (whose mtime only says
    that a temporary entry came and went)."""
    out = {}
    for root in roots:
        for p in [root, *root.rglob("*")]:
            st = p.lstat()
            out[str(p)] = (st.st_size, st.st_mtime_ns) if p.is_file() else (0, 0)
    return out


def one_error_line(result) -> str:
    assert result.exit_code == 1, f"exit {result.exit_code}: {result.output}\n{result.exception!r}"
    assert isinstance(result.exception, SystemExit), repr(result.exception)  # handled, no traceback
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], result.stderr  # progress bars may come before it
    return errors[0]


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_one_line_exit_1_and_writes_nothing(name, small_project, tmp_path, monkeypatch):
    case = CASES[name]
    params = merge(yaml.safe_load((small_project / "params.yaml").read_text()), case.params)
    if case.prepare is not None:
        case.prepare(small_project, tmp_path, params)
    path = tmp_path / "params.yaml"
    path.write_text(case.raw_params if case.raw_params is not None else yaml.safe_dump(params, sort_keys=False))
    args = [*case.args, params["paths"]["activations"]] if case.args[0] == "inspect" else case.args
    monkeypatch.chdir(tmp_path)
    before = snapshot(small_project, tmp_path)
    result = run_stage(path, *args)
    line = one_error_line(result)
    for word in case.words:
        assert word in line, line
    assert snapshot(small_project, tmp_path) == before, "an output was created or modified"


def test_a_full_disk_while_saving_is_one_line_and_leaves_no_output(small_project, tmp_path, monkeypatch):
    """ENOSPC as safetensors reports it (measured on a 1 MB tmpfs): the student is not written,
    no temporary directory is left, the metrics are not written."""
    from safetensors import SafetensorError

    from hyena.model.modeling import HyenaStudentForCausalLM

    def full_disk(self, directory, **kwargs):
        Path(directory, "model.safetensors").write_bytes(b"partial")
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    params = yaml.safe_load((small_project / "params.yaml").read_text())
    students = copied(small_project, tmp_path, params, "students")
    shutil.rmtree(students / "finetuned")
    params["paths"]["reports"] = str(tmp_path / "reports")
    params["paths"]["checkpoints"] = str(tmp_path / "checkpoints")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.setattr(HyenaStudentForCausalLM, "save_pretrained", full_disk)
    line = one_error_line(run_stage(tmp_path / "params.yaml", "finetune"))
    assert "no space left on device" in line and "free disk space" in line
    assert sorted(p.name for p in students.iterdir()) == ["distilled", "layer_00", "layer_01", "layer_02", "recurrent"]
    assert not (tmp_path / "reports/metrics").exists()  # DVCLive's curve of the steps that ran is all there is


def test_eval_scores_no_owt_perplexity_for_a_model_of_another_tokenizer(small_project, tmp_path):
    """Tokens from another tokenizer are not an error for eval (it compares models), but the
    model gets no OWT number on them: the report says why."""
    params = yaml.safe_load((small_project / "params.yaml").read_text())
    other_tokenizer_tokens(small_project, tmp_path, params)
    params["paths"]["eval"] = str(tmp_path / "eval")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    result = run_stage(tmp_path / "params.yaml", "eval")
    assert result.exit_code == 0, result.output
    owt = json.loads((tmp_path / "eval/results.json").read_text())["models"]["finetuned"]["ppl"]["owt"]["32"]
    assert "another tokenizer" in owt["na"]


def test_eval_checks_every_model_before_evaluating_the_first(small_project, tmp_path, monkeypatch):
    """A truncated GGUF second in eval.models fails the stage before the first model is loaded:
    one line naming the file and the fix, nothing written."""
    from hyena.evaluate import runner

    params = yaml.safe_load((small_project / "params.yaml").read_text())
    params["eval"]["models"] = {"finetuned": "finetuned", "smollm": str(truncated_gguf(tmp_path))}
    params["paths"]["eval"] = str(tmp_path / "eval")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    loaded = []
    load_model = runner.load_model
    monkeypatch.setattr(runner, "load_model", lambda source, *a, **k: loaded.append(source) or load_model(source, *a, **k))
    before = snapshot(small_project)
    line = one_error_line(run_stage(tmp_path / "params.yaml", "eval"))
    for word in ("SmolLM2-135M-Instruct.Q4_1.gguf", "truncated or not a GGUF file", "re-download it", "eval.models.smollm"):
        assert word in line, line
    assert loaded == [], "a model was evaluated before the check"
    assert not (tmp_path / "eval").exists()
    assert snapshot(small_project) == before
