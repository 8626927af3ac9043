"""LM training of students: the logit-KL terms (online and cached top-k), which weights train."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import tiny_llama_config
from transformers import AutoModelForCausalLM

from hyena.core.dist import DistEnv
from hyena.model.build import StudentConfig, build_student
from hyena.model.operator import HyenaConfig
from hyena.train.lm import FinetuneConfig, kl_to_teacher, kl_to_teacher_topk, lm_loss, train_lm


def test_top_k_kl_is_the_full_kl_when_k_covers_the_vocabulary():
    g = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(2, 5, 40, generator=g), 3 * torch.randn(2, 5, 40, generator=g)
    values, ids = teacher.topk(40, dim=-1)
    for t in (1.0, 2.0):
        torch.testing.assert_close(kl_to_teacher_topk(student, values, ids, t), kl_to_teacher(student, teacher, t))
    # with fewer tokens it stays a KL (>= 0) and vanishes when the student matches the teacher
    values, ids = teacher.topk(8, dim=-1)
    assert kl_to_teacher_topk(student, values, ids, 1.0) > 0
    assert kl_to_teacher_topk(teacher, values, ids, 1.0) < kl_to_teacher_topk(student, values, ids, 1.0)


@pytest.fixture
def pair():
    torch.manual_seed(0)
    teacher = AutoModelForCausalLM.from_config(tiny_llama_config(vocab_size=128, layers=2)).eval()
    student = build_student(teacher, StudentConfig(hyena=HyenaConfig(max_len=64, emb_dim=3)))
    tokens = np.random.default_rng(0).integers(0, 128, (12, 32)).astype(np.int32)
    return teacher, student, tokens


def _topk(teacher, tokens, k):
    with torch.no_grad():
        top = teacher(input_ids=torch.from_numpy(tokens.astype(np.int64))).logits.topk(k, dim=-1)
    return top.values.numpy(), top.indices.numpy().astype(np.int32)


@torch.no_grad()
def _kl(student, teacher, tokens, k=16) -> float:
    values, ids = _topk(teacher, tokens, k)
    logits = student(input_ids=torch.from_numpy(tokens.astype(np.int64))).logits
    return kl_to_teacher_topk(logits, torch.from_numpy(values), torch.from_numpy(ids).long(), 1.0).item()


def test_distilling_from_cached_top_k_logits_moves_the_student_towards_the_teacher(pair):
    teacher, student, tokens = pair
    before = _kl(student, teacher, tokens[8:])
    cfg = FinetuneConfig(lr=1e-2, batch_size=4, ce_weight=0.0, kl_weight=1.0, warmup_frac=0.0, log_every=100)
    train_lm(student, tokens[:8], tokens[8:], cfg, 24, DistEnv(), teacher_topk=_topk(teacher, tokens[:8], 16))
    after = _kl(student, teacher, tokens[8:])
    assert after < 0.8 * before, (before, after)  # held-out rows: the KL to the teacher falls


def test_training_only_the_mixers_leaves_every_teacher_weight_alone(pair):
    teacher, student, tokens = pair
    before = {k: v.clone() for k, v in student.state_dict().items()}
    cfg = FinetuneConfig(lr=1e-3, batch_size=4, train="mixers", warmup_frac=0.0, log_every=100)
    res = train_lm(student, tokens[:8], tokens[8:], cfg, 2, DistEnv())
    changed = {k for k, v in student.state_dict().items() if not torch.equal(v, before[k])}
    assert changed and all(".self_attn." in k for k in changed), sorted(changed)[:5]
    assert res["val_loss"] == pytest.approx(lm_loss(student, tokens[8:], DistEnv()))


def test_a_finetune_with_nothing_to_learn_from_is_refused():
    with pytest.raises(ValueError, match="ce_weight and finetune.kl_weight are both 0"):
        FinetuneConfig(ce_weight=0.0, kl_weight=0.0)


def test_equal_compute_budget_counts_what_each_recipe_trains(pair):
    """The from-scratch baseline's budget: a kept attention layer costs nothing, attention transfer
    costs the mixer's 6N plus the teacher attention's 2N forward, layer-output MSE the layer's 6N."""
    from hyena.train.budget import (
        count_params,
        equal_compute_tokens,
        lm_params,
        teacher_attention_params,
    )
    from hyena.train.distill import DistillConfig

    teacher, student, _ = pair
    hybrid = build_student(teacher, StudentConfig(hyena=HyenaConfig(max_len=64, emb_dim=3), keep_attention=[2]))
    ft = FinetuneConfig(batch_size=4, epochs=1.0)
    attn = teacher_attention_params(student.config)
    assert attn == sum(p.numel() for p in teacher.model.layers[0].self_attn.parameters())
    flops = {}
    for name, model, target, readout, epochs in (
            ("layer", student, "layer_output", "none", 2), ("mixer", student, "mixer_output", "none", 2),
            ("hybrid", hybrid, "layer_output", "none", 2), ("readout", student, "mixer_output", "least_squares", 0)):
        d = DistillConfig(batch_size=4, epochs=epochs, target=target, readout=readout,
                          layers={"01": {"prev": "00"}, "02": {"prev": "01"}}, last="02")
        flops[name] = equal_compute_tokens(model, d, 8, 32, ft, 8, 32, attn)[1]["distill"]
    tokens = 2 * 8 * 32  # 2 epochs of 8 rows of 32 tokens, per layer
    layers, mixers = student.decoder_layers(), [student.mixer(i) for i in range(2)]
    assert flops["layer"] == 6 * tokens * sum(count_params(x) for x in layers)
    assert flops["mixer"] == tokens * sum(6 * count_params(m) + 2 * attn for m in mixers)
    assert flops["hybrid"] == 6 * tokens * count_params(hybrid.decoder_layers()[0])  # layer 2 kept: free
    d = student.mixer(0).d_model  # a readout alone: one pass of features and target over the rows, and the Gram
    assert flops["readout"] == 8 * 32 * sum(2 * count_params(m) + 2 * attn + 4 * (d + 1) ** 2 for m in mixers)
    # an online teacher's forward pass is charged to the recipe (2N of the teacher a token); cached logits are not
    online = FinetuneConfig(batch_size=4, epochs=1.0, kl_weight=1.0, kl_source="online")
    cached = FinetuneConfig(batch_size=4, epochs=1.0, kl_weight=1.0, kl_source="cached")
    d = DistillConfig(batch_size=4, epochs=0, layers={"01": {"prev": "00"}}, last="01")
    with_teacher = equal_compute_tokens(student, d, 8, 32, online, 8, 32, attn)
    without = equal_compute_tokens(student, d, 8, 32, cached, 8, 32, attn)
    assert "finetune_teacher" not in without[1]
    assert with_teacher[1]["finetune_teacher"] == 2 * lm_params(teacher) * 2 * 4 * 32  # 2 steps of 4 x 32
    assert with_teacher[0] > without[0]


class _Reads:
    """Wraps a config and records every field read from it (and from its per-layer configs)."""

    def __init__(self, cfg, section: str, seen: set):
        self._cfg, self._section, self._seen = cfg, section, seen

    def __getattr__(self, name):
        value = getattr(self._cfg, name)
        if name == "for_layer":
            return lambda key: _Reads(value(key), self._section, self._seen)
        self._seen.add(f"{self._section}.{name}")
        return value


@pytest.mark.parametrize("recipe", [
    dict(target="mixer_output", readout="least_squares", epochs=0, kl_source="online"),
    dict(target="layer_output", readout="none", epochs=1, kl_source="cached"),
])
def test_pretrain_stage_declares_every_param_its_budget_reads(pair, recipe):
    """dvc.yaml's pretrain params must hold every distill / finetune knob the equal-compute budget
    reads, or changing that knob would leave a stale from-scratch baseline."""
    import yaml
    from conftest import ROOT

    from hyena.train.budget import equal_compute_tokens, teacher_attention_params
    from hyena.train.distill import DistillConfig

    _, student, _ = pair
    d = DistillConfig(batch_size=4, epochs=recipe["epochs"], target=recipe["target"], readout=recipe["readout"],
                      layers={"01": {"prev": "00"}, "02": {"prev": "01"}}, last="02")
    ft = FinetuneConfig(batch_size=4, epochs=1.0, kl_weight=1.0, kl_source=recipe["kl_source"])
    seen: set = set()
    equal_compute_tokens(student, _Reads(d, "distill", seen), 8, 32, _Reads(ft, "finetune", seen), 8, 32,
                         teacher_attention_params(student.config))
    declared = set(yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]["pretrain"]["params"])
    assert seen and seen <= declared, sorted(seen - declared)
