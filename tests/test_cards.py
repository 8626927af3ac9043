"""Model cards: the Hugging Face header, the lineage a later stage reads back, and a loading recipe that works."""

from __future__ import annotations

import logging
import re

import pytest
import torch
import yaml

from hyena.model.build import StudentConfig, build_student
from hyena.model.cards import CARD, ModelCard
from hyena.model.operator import HyenaConfig

TEACHER = {"source": "EleutherAI/pythia-70m", "family": "gpt_neox", "weights_hash": "0123abcd", "random_init": False}


def _header(path) -> dict:
    text = path.read_text()
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n", 2)[1])


def test_header_lineage_and_read_back(tmp_path):
    base = ModelCard("distilled", TEACHER, {"distill": {"lr": 0.001}, "tokenize": {"corpus": "Skylion007/openwebtext"}},
                     {"distill": 4096}, {"free_running_val_mse_last_layer": 0.123456789})
    card = base.derive("finetuned", {"finetune": {"lr": 6e-4, "betas": (0.9, 0.98)}}, {"finetune": 2048}, {"val_ppl": 51.2})
    card.write(tmp_path)
    head = _header(tmp_path / CARD)
    assert head["library_name"] == "transformers" and head["pipeline_tag"] == "text-generation"
    assert head["base_model"] == "EleutherAI/pythia-70m" and head["datasets"] == ["Skylion007/openwebtext"]
    assert "hyena_student" in head["tags"] and "laughing-hyena" not in head["tags"]
    info = head["hyena"]
    assert info["training_tokens"] == {"distill": 4096, "finetune": 2048}  # the stages behind it add up
    assert info["metrics"] == {"val_ppl": 51.2}  # its own, not the distilled model's
    assert info["recipe"]["finetune"]["betas"] == [0.9, 0.98] and info["recipe"]["distill"] == {"lr": 0.001}
    back = ModelCard.read(tmp_path)
    assert back == ModelCard("finetuned", TEACHER, {**card.recipe, "finetune": {"lr": 6e-4, "betas": [0.9, 0.98]}},
                             card.training_tokens, card.metrics)
    body = (tmp_path / CARD).read_text()
    assert "| finetune | 2,048 |" in body and "weights hash `0123abcd`" in body and "`paths.eval`" in body


def test_local_teacher_and_corpus_are_not_hub_references(tmp_path):
    teacher = {"source": "../shared/models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", "family": "llama", "weights_hash": "x"}
    ModelCard("layer_00", teacher, {"tokenize": {"corpus": "../shared/data/owt.jsonl"}}).write(tmp_path)
    head = _header(tmp_path / CARD)
    assert "base_model" not in head and "datasets" not in head  # the Hub would reject a path
    assert head["hyena"]["teacher"]["source"].endswith(".gguf")
    random = {**TEACHER, "random_init": True}
    ModelCard("layer_00", random).write(tmp_path)
    assert "base_model" not in _header(tmp_path / CARD)  # its weights are not the hub model's


def test_read_names_the_file_and_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"no model card {re.escape(str(tmp_path / CARD))}: rerun the stage"):
        ModelCard.read(tmp_path)
    (tmp_path / CARD).write_text("# a README without a header\n")
    with pytest.raises(ValueError, match="no `hyena:` block"):
        ModelCard.read(tmp_path)


def _python_block(text: str) -> str:
    return text.split("```python\n", 1)[1].split("```", 1)[0]


def test_the_card_loading_recipe_runs(tmp_path, tiny_llama, pythia_tokenizer, caplog):
    """The card's own snippet, run as written: it loads the student, generates, and wraps it for
    lm-eval without HFLM's "neither marked as CausalLM" warning."""
    student = build_student(tiny_llama, StudentConfig(hyena=HyenaConfig(max_len=128)))
    student.save_pretrained(tmp_path)
    pythia_tokenizer.save_pretrained(tmp_path)  # any tokenizer whose ids fit the tiny vocab
    ModelCard("layer_00", TEACHER).write(tmp_path, student, location=str(tmp_path))
    code = _python_block((tmp_path / CARD).read_text())
    assert code.startswith("import hyena.student")
    scope: dict = {}
    with caplog.at_level(logging.INFO):
        exec(compile(code.replace('"The meaning', '"Hyenas').replace("max_new_tokens=20", "max_new_tokens=3"),
                     "card", "exec"), scope)
    assert type(scope["model"]).__name__ == "HyenaStudentForCausalLM"
    with torch.no_grad():
        # same weights; the loaded model's generate() left filter spectra cached, so equal to rounding
        torch.testing.assert_close(scope["model"](input_ids=scope["ids"]).logits, student(input_ids=scope["ids"]).logits,
                                   rtol=1e-5, atol=1e-5)
    assert scope["lm"].backend == "causal"
    assert not any("neither marked as CausalLM" in r.getMessage() for r in caplog.records)


def test_hflm_would_warn_without_a_named_backend(tiny_llama, pythia_tokenizer, caplog):
    """Why the harness names the backend: transformers keeps registered classes out of the table
    HFLM reads, so left to itself HFLM warns about a student."""
    from lm_eval.models.huggingface import HFLM

    from hyena.evaluate.harness import causal_lm

    student = build_student(tiny_llama, StudentConfig(hyena=HyenaConfig(max_len=128)))
    with caplog.at_level(logging.INFO):
        HFLM(pretrained=student, tokenizer=pythia_tokenizer, batch_size=1, device="cpu")
    assert any("neither marked as CausalLM" in r.getMessage() for r in caplog.records)
    caplog.clear()
    with caplog.at_level(logging.INFO):
        lm = causal_lm(student, pythia_tokenizer, batch_size=1)
    assert lm.backend == "causal" and not any("neither marked" in r.getMessage() for r in caplog.records)
