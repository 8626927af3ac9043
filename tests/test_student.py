"""Students: built from real teacher architectures, saved/loaded like HF models, generating right."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import NEW_FAMILIES, TINY_CONFIGS, reference_qkv, tiny_teacher
from transformers import AutoConfig, AutoModelForCausalLM

from hyena.model.build import StudentConfig, build_student, parameter_report
from hyena.model.modeling import HyenaMixer, HyenaStudentForCausalLM, HyenaStudentHFConfig
from hyena.model.operator import HyenaConfig
from hyena.teachers import capture_layer_outputs, get_adapter, load_teacher

SENTENCE = "Hyenas are mostly nocturnal animals, but they sometimes venture out in the early morning."
HCFG = HyenaConfig(max_len=256)


@pytest.fixture(scope="module")
def pythia(pythia_dir):
    torch.manual_seed(0)
    return load_teacher(str(pythia_dir), config_only=True)


@pytest.fixture(scope="module")
def pythia_student(pythia, pythia_dir):
    torch.manual_seed(1)
    return build_student(pythia, StudentConfig(hyena=HCFG, init="random"), teacher_source=str(pythia_dir))


def _attention_keys(model) -> set[str]:
    adapter = get_adapter(model)
    prefixes = [f"{adapter.base_attr}.layers.{i}.{adapter.attn_attr}." for i in range(len(adapter.layers(model)))]
    return {k for k in model.state_dict() if k.startswith(tuple(prefixes))}


def test_pythia_student_forward(pythia_student, pythia_tokenizer):
    ids = pythia_tokenizer([SENTENCE, SENTENCE[::-1]], return_tensors="pt", padding=True).input_ids
    with torch.no_grad():
        out = pythia_student(input_ids=ids, labels=ids)
    assert out.logits.shape == (2, ids.shape[1], 50304)
    assert torch.isfinite(out.logits).all() and torch.isfinite(out.loss)
    assert all(isinstance(pythia_student.mixer(i), HyenaMixer) for i in range(6))
    # no attention module left anywhere
    names = {type(m).__name__ for m in pythia_student.modules()}
    assert not any("Attention" in n for n in names), names


def test_non_attention_weights_copied_and_nothing_else(pythia, pythia_student):
    t_sd, s_sd = pythia.state_dict(), pythia_student.backbone.state_dict()
    attn = _attention_keys(pythia)
    shared = set(t_sd) - attn
    assert shared and shared <= set(s_sd)
    for k in shared:
        assert torch.equal(t_sd[k], s_sd[k]), k
    mixer_keys = set(s_sd) - shared
    assert mixer_keys and all(".attention." in k for k in mixer_keys)
    # random init copied nothing from the attention: no mixer tensor equals any teacher tensor
    teacher_tensors = list(t_sd.values())
    for k in mixer_keys:
        assert not any(v.shape == s_sd[k].shape and torch.equal(v, s_sd[k]) for v in teacher_tensors), k


def test_save_load_round_trip_is_exact(pythia_student, pythia_dir, tmp_path):
    student = pythia_student
    ids = torch.randint(0, 50000, (2, 40))
    with torch.no_grad():
        want = student(input_ids=ids).logits
    student.save_pretrained(tmp_path)
    files = {p.name for p in tmp_path.iterdir()}
    assert "model.safetensors" in files and not any(f.endswith((".bin", ".pt", ".pth")) for f in files)
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["model_type"] == "hyena_student" and cfg["init"] == "random"
    assert cfg["teacher_source"] == str(pythia_dir) and cfg["teacher_config"]["model_type"] == "gpt_neox"
    assert cfg["hyena"] == HCFG.to_dict()
    torch.manual_seed(123)  # a different RNG state: any re-initialised weight would show
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()  # via the registration
    assert isinstance(loaded, HyenaStudentForCausalLM)
    with torch.no_grad():
        assert torch.equal(loaded(input_ids=ids).logits, want)
    assert isinstance(AutoConfig.from_pretrained(tmp_path), HyenaStudentHFConfig)


def test_tied_embeddings_survive_build_and_reload(tiny_llama, tmp_path):
    student = build_student(tiny_llama, StudentConfig(hyena=HCFG))
    assert student.get_output_embeddings().weight is student.get_input_embeddings().weight
    assert torch.equal(student.get_input_embeddings().weight, tiny_llama.model.embed_tokens.weight)
    student.save_pretrained(tmp_path)
    loaded = HyenaStudentForCausalLM.from_pretrained(tmp_path)
    assert loaded.get_output_embeddings().weight is loaded.get_input_embeddings().weight
    ids = torch.randint(0, 1000, (1, 12))
    with torch.no_grad():
        assert torch.equal(loaded(input_ids=ids).logits, student(input_ids=ids).logits)


def _greedy_by_hand(model, prompt, steps):
    """Re-run the full forward on the whole sequence each step and take the argmax."""
    seq = prompt
    for _ in range(steps):
        nxt = model(input_ids=seq).logits[:, -1].argmax(-1, keepdim=True)
        seq = torch.cat([seq, nxt], dim=1)
    return seq


@torch.no_grad()
def test_generate_equals_manual_argmax_loop(pythia_student, pythia_tokenizer):
    prompt = pythia_tokenizer(SENTENCE, return_tensors="pt").input_ids[:, :8]
    out = pythia_student.generate(prompt, max_new_tokens=10, min_new_tokens=10, do_sample=False,
                                  pad_token_id=0)
    assert torch.equal(out, _greedy_by_hand(pythia_student, prompt, 10))


@torch.no_grad()
def test_generate_ignores_an_explicit_use_cache(tiny_neox):
    """Even with use_cache=True, generate must feed the whole sequence, never one token."""
    torch.manual_seed(3)
    student = build_student(tiny_neox, StudentConfig(hyena=HCFG))
    prompt = torch.randint(0, 50000, (2, 6))
    out = student.generate(prompt, max_new_tokens=8, min_new_tokens=8, do_sample=False,
                           pad_token_id=0, use_cache=True)
    assert torch.equal(out, _greedy_by_hand(student, prompt, 8))


@torch.no_grad()
def test_left_padding_gives_the_unpadded_results(tiny_llama):
    """Mixers see no mask; left-padded rows must still match the same rows run alone."""
    torch.manual_seed(4)
    student = build_student(tiny_llama, StudentConfig(hyena=HCFG))
    short, long_ = torch.randint(3, 1000, (1, 5)), torch.randint(3, 1000, (1, 9))
    ids = torch.cat([torch.cat([torch.full((1, 4), 2), short], 1), long_])  # left-pad the short row
    mask = torch.ones_like(ids)
    mask[0, :4] = 0
    batched = student(input_ids=ids, attention_mask=mask).logits
    torch.testing.assert_close(batched[0, 4:], student(input_ids=short).logits[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(batched[1], student(input_ids=long_).logits[0], rtol=1e-5, atol=1e-5)
    naive = student(input_ids=ids).logits  # no mask: the pads leak into the short row
    assert _rel_err(naive[0, 4:], batched[0, 4:]) > 1e-2
    out = student.generate(ids, attention_mask=mask, max_new_tokens=5, min_new_tokens=5,
                           do_sample=False, pad_token_id=2)
    assert torch.equal(out[0, 4:], _greedy_by_hand(student, short, 5)[0])
    assert torch.equal(out[1], _greedy_by_hand(student, long_, 5)[0])


@torch.no_grad()
def test_embed_and_run_layer_reproduce_forward(pythia, pythia_student):
    ids = torch.randint(0, 50000, (2, 24))
    h = pythia_student.embed(ids)
    assert torch.equal(h, capture_layer_outputs(pythia, ids)[0])  # same entry 0 as the teacher store
    for i in range(len(pythia_student.decoder_layers())):
        h = pythia_student.run_layer(i, h)
    base = pythia_student.backbone.gpt_neox
    logits = pythia_student.get_output_embeddings()(base.final_layer_norm(h))
    torch.testing.assert_close(logits, pythia_student(input_ids=ids).logits, rtol=1e-5, atol=1e-5)


def test_sequence_longer_than_max_len_is_refused(tiny_neox):
    student = build_student(tiny_neox, StudentConfig(hyena=HyenaConfig(max_len=16)))
    with pytest.raises(ValueError, match="max_len"):
        student(input_ids=torch.zeros(1, 17, dtype=torch.long))
    assert student.config.max_position_embeddings == 16


def test_bad_init_is_refused(tiny_neox):
    with pytest.raises(ValueError, match="teacher_attention"):
        build_student(tiny_neox, StudentConfig(hyena=HCFG, init="teacher"))


# --- init from the teacher's attention ----------------------------------------------------------


def _make_filter_identity(mixer: HyenaMixer) -> None:
    """Long filter h == 0 and pass-through bias 1: h * u + 1 u = u, i.e. a delta filter."""
    with torch.no_grad():
        mixer.filter_fn.ffn[-1].weight.zero_()
        mixer.filter_fn.bias.fill_(1.0)


def _rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    return ((got - want).norm() / want.norm()).item()


def _expected_mixer_output(u, q, k, v, o_w, o_b):
    """What an order-2 Hyena with identity short conv and delta filter computes: O(q * k * v)."""
    y = q * k * v  # (B, L, d)
    return y @ o_w.T + (o_b if o_b is not None else 0.0)


@torch.no_grad()
def test_teacher_attention_init_wiring_pythia(pythia):
    student = build_student(pythia, StudentConfig(hyena=HCFG, init="teacher_attention"))
    attn = pythia.gpt_neox.layers[2].attention
    mixer = student.mixer(2)
    d, heads = 512, 8
    hs = d // heads
    u = torch.randn(2, 11, d)
    # the teacher's own q/k/v, as its forward splits the fused projection (per-head interleave)
    qkv = attn.query_key_value(u).view(2, 11, heads, 3 * hs)
    q, k, v = (t.reshape(2, 11, d) for t in qkv.chunk(3, dim=-1))
    # each gate individually (short conv is the identity): x_0 <- Q, x_1 <- K, v <- V
    (x0, x1), vv = mixer.gates(u)
    torch.testing.assert_close(x0.transpose(1, 2), q, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(x1.transpose(1, 2), k, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(vv.transpose(1, 2), v, rtol=1e-5, atol=1e-5)
    _make_filter_identity(mixer)
    y, none = mixer(u, attention_mask=None, position_embeddings=None)
    assert none is None
    want = _expected_mixer_output(u, q, k, v, attn.dense.weight, attn.dense.bias)
    assert _rel_err(y, want) < 1e-4
    # a naive (wrong) de-interleave, W.chunk(3) as if rows were [Q; K; V], gives another answer
    wq, wk, wv = attn.query_key_value.weight.chunk(3)
    bq, bk, bv = attn.query_key_value.bias.chunk(3)
    wrong = _expected_mixer_output(u, u @ wq.T + bq, u @ wk.T + bk, u @ wv.T + bv,
                                   attn.dense.weight, attn.dense.bias)
    assert _rel_err(wrong, want) > 0.1


@torch.no_grad()
def test_teacher_attention_init_wiring_llama_gqa(tiny_llama):
    cfg = tiny_llama.config
    student = build_student(tiny_llama, StudentConfig(hyena=HCFG, init="teacher_attention"))
    attn = tiny_llama.model.layers[1].self_attn
    mixer = student.mixer(1)
    d, hd = cfg.hidden_size, cfg.hidden_size // cfg.num_attention_heads
    groups = cfg.num_attention_heads // cfg.num_key_value_heads
    u = torch.randn(3, 9, d)
    q = attn.q_proj(u)
    # repeat_kv: every kv head serves `groups` consecutive query heads
    k = attn.k_proj(u).view(3, 9, -1, hd).repeat_interleave(groups, dim=2).reshape(3, 9, d)
    v = attn.v_proj(u).view(3, 9, -1, hd).repeat_interleave(groups, dim=2).reshape(3, 9, d)
    _make_filter_identity(mixer)
    y, _ = mixer(u)
    want = _expected_mixer_output(u, q, k, v, attn.o_proj.weight, None)
    assert _rel_err(y, want) < 1e-4
    assert torch.count_nonzero(mixer.in_proj.bias) == 0 and torch.count_nonzero(mixer.out_proj.bias) == 0
    # tiling K/V (repeat) instead of interleaving would be wrong
    k_tiled = attn.k_proj(u).repeat(1, 1, groups)
    wrong = _expected_mixer_output(u, q, k_tiled, v, attn.o_proj.weight, None)
    assert _rel_err(wrong, want) > 0.1


# --- Qwen2, Qwen3, Mistral, GPT-2 ---------------------------------------------------------------


@pytest.fixture(scope="module", params=NEW_FAMILIES)
def family_pair(request):
    """(family, tiny random teacher, its student with random Hyena mixers)."""
    teacher = tiny_teacher(request.param)
    torch.manual_seed(1)
    return request.param, teacher, build_student(teacher, StudentConfig(hyena=HCFG))


@torch.no_grad()
def test_new_family_student_runs_and_copies_every_non_attention_weight(family_pair):
    family, teacher, student = family_pair
    ids = torch.randint(3, 500, (2, 30))
    out = student(input_ids=ids, labels=ids)
    assert out.logits.shape == (2, 30, 512) and torch.isfinite(out.logits).all() and torch.isfinite(out.loss)
    assert not any("Attention" in type(m).__name__ for m in student.modules())
    adapter = get_adapter(teacher)
    prefixes = tuple(f"{adapter.base_attr}.{adapter.layers_attr}.{i}.{adapter.attn_attr}." for i in range(2))
    t_sd, s_sd = teacher.state_dict(), student.backbone.state_dict()
    shared = {k for k in t_sd if not k.startswith(prefixes)}
    for k in shared:
        assert torch.equal(t_sd[k], s_sd[k]), k
    assert all(k.startswith(prefixes) for k in set(s_sd) - shared)
    if family == "gpt2":  # the learned absolute positions stay: they feed layer 1
        assert "transformer.wpe.weight" in shared


def test_new_family_save_load_round_trip_is_exact(family_pair, tmp_path):
    family, _, student = family_pair
    ids = torch.randint(3, 500, (2, 25))
    with torch.no_grad():
        want = student(input_ids=ids).logits
    student.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["teacher_config"]["model_type"] == family
    assert (config["hidden_size"], config["num_hidden_layers"], config["vocab_size"]) == (64, 2, 512)  # GPT-2: n_embd, n_layer
    torch.manual_seed(123)  # any re-initialised weight would show
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert isinstance(loaded, HyenaStudentForCausalLM)
    with torch.no_grad():
        assert torch.equal(loaded(input_ids=ids).logits, want)


@torch.no_grad()
def test_new_family_generate_equals_manual_argmax_loop(family_pair):
    _, _, student = family_pair
    prompt = torch.randint(3, 500, (2, 7))
    out = student.generate(prompt, max_new_tokens=9, min_new_tokens=9, do_sample=False, pad_token_id=0)
    assert torch.equal(out, _greedy_by_hand(student, prompt, 9))


@torch.no_grad()
def test_new_family_embed_and_run_layer_reproduce_forward(family_pair):
    _, teacher, student = family_pair
    ids = torch.randint(3, 500, (2, 24))
    h = student.embed(ids)
    assert torch.equal(h, capture_layer_outputs(teacher, ids)[0])  # entry 0 of the teacher store
    for i in range(len(student.decoder_layers())):
        h = student.run_layer(i, h)
    base = get_adapter(teacher).base(student.backbone)
    final_norm = base.ln_f if hasattr(base, "ln_f") else base.norm
    logits = student.get_output_embeddings()(final_norm(h))
    torch.testing.assert_close(logits, student(input_ids=ids).logits, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family", NEW_FAMILIES)
@torch.no_grad()
def test_new_family_teacher_attention_init_wiring(family):
    """x_0 <- Q, x_1 <- K, v <- V, out <- O, as the teacher's own attention computes them (GPT-2's
    Conv1D transposed, Qwen2's biases, GQA repeated; Qwen3: per head along its normed q and k)."""
    teacher = tiny_teacher(family)
    student = build_student(teacher, StudentConfig(hyena=HCFG, init="teacher_attention"))
    adapter = get_adapter(teacher)
    attn, mixer = adapter.attention(adapter.layers(teacher)[1]), student.mixer(1)
    u = torch.randn(2, 9, 64)
    q, k, v, o_w, o_b = reference_qkv(attn, teacher.config, u)
    (x0, x1), vv = mixer.gates(u)
    x0, x1, vv = (t.transpose(1, 2) for t in (x0, x1, vv))  # (B, L, d)
    torch.testing.assert_close(vv, v, rtol=1e-5, atol=1e-5)
    if family == "qwen3":
        def per_head(t):
            return torch.nn.functional.normalize(t.view(2, 9, 4, 16), dim=-1)

        torch.testing.assert_close(per_head(x0), per_head(q), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(per_head(x1), per_head(k), rtol=1e-5, atol=1e-5)
        return
    torch.testing.assert_close(x0, q, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(x1, k, rtol=1e-5, atol=1e-5)
    _make_filter_identity(mixer)
    y, _ = mixer(u)
    assert _rel_err(y, _expected_mixer_output(u, q, k, v, o_w, o_b)) < 1e-4


# --- the real SmolLM2 teacher -------------------------------------------------------------------


@torch.no_grad()
def test_smollm_student_builds_and_runs(smollm_teacher, smollm_tokenizer):
    student = build_student(smollm_teacher, StudentConfig(hyena=HyenaConfig(max_len=8192), init="teacher_attention"),
                            teacher_source="smollm2.gguf")
    assert len(student.decoder_layers()) == 30
    assert "quantization_config" not in student.config.teacher_config
    assert student.get_output_embeddings().weight is student.get_input_embeddings().weight
    t_sd, s_sd = smollm_teacher.state_dict(), student.backbone.state_dict()
    for k in set(t_sd) - _attention_keys(smollm_teacher):
        assert torch.equal(t_sd[k], s_sd[k]), k
    ids = smollm_tokenizer(SENTENCE, return_tensors="pt").input_ids
    logits = student(input_ids=ids).logits
    assert logits.shape == (1, ids.shape[1], 49152) and torch.isfinite(logits).all()
    report = parameter_report(smollm_teacher, student)
    assert report["teacher_total"] == 134_515_008
    assert report["student_total"] == report["shared"] + 30 * report["per_mixer"]


def test_parameter_report_pythia(pythia, pythia_student):
    r = parameter_report(pythia, pythia_student)
    assert r["teacher_total"] == 70_426_624
    assert r["teacher_total"] == r["shared"] + 6 * r["per_attention"]
    assert r["student_total"] == r["shared"] + 6 * r["per_mixer"]
    assert 0 < r["per_mixer_filter"] < r["per_mixer"]


# --- hybrid students: some layers keep the teacher's attention -----------------------------------


@pytest.mark.parametrize("family", sorted(TINY_CONFIGS))
def test_a_student_that_keeps_every_attention_is_the_teacher(family):
    teacher = tiny_teacher(family, vocab_size=1000)
    n = len(get_adapter(teacher).layers(teacher))
    student = build_student(teacher, StudentConfig(hyena=HCFG, keep_attention=list(range(1, n + 1))))
    ids = torch.randint(0, 1000, (2, 24), generator=torch.Generator().manual_seed(0))
    assert student.hyena_layers() == []
    torch.testing.assert_close(student(input_ids=ids).logits, teacher(input_ids=ids).logits, rtol=0, atol=0)


@pytest.mark.parametrize("family", sorted(TINY_CONFIGS))
def test_hybrid_student_keeps_the_listed_attentions_and_round_trips(family, tmp_path):
    """(Mistral's sliding window, 8 positions, is shorter than the 24-token sequences here.)"""
    teacher = tiny_teacher(family, vocab_size=1000)
    adapter = get_adapter(teacher)
    student = build_student(teacher, StudentConfig(hyena=HCFG, keep_attention=[2], out_scale=0.0))
    assert student.hyena_layers() == [0] and isinstance(student.mixer(0), HyenaMixer)
    kept = student.mixer(1)
    assert type(kept) is type(adapter.attention(adapter.layers(teacher)[1]))
    for (name, a), (_, b) in zip(kept.state_dict().items(), adapter.attention(adapter.layers(teacher)[1]).state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    # out_scale 0: the untrained Hyena mixer adds nothing, so layer 1 is the teacher's minus its attention
    assert student.mixer(0).out_proj.weight.abs().max() == 0
    ids = torch.randint(0, 1000, (2, 24), generator=torch.Generator().manual_seed(1))
    h = capture_layer_outputs(teacher, ids)
    # run_layer gives a kept attention layer its positions and causal mask: the teacher's own output
    torch.testing.assert_close(student.run_layer(1, h[1]), h[2], rtol=1e-5, atol=1e-5)
    student.save_pretrained(tmp_path)
    loaded = HyenaStudentForCausalLM.from_pretrained(tmp_path)
    assert loaded.config.keep_attention == [2] and loaded.hyena_layers() == [0]
    assert torch.equal(loaded(input_ids=ids).logits, student(input_ids=ids).logits)
    report = parameter_report(teacher, student)
    assert (report["hyena_layers"], report["kept_attention_layers"]) == (1, 1)
    with pytest.raises(ValueError, match="outside the teacher"):
        build_student(teacher, StudentConfig(hyena=HCFG, keep_attention=[9]))


def test_substitution_cost_ranks_the_layer_whose_mixer_hurts_most(tiny_llama):
    """A layer whose Hyena mixer is garbage costs the teacher more, swapped in alone, than one whose
    mixer adds nothing; and every cost is measured against the unmodified teacher (KL >= 0)."""
    from hyena.evaluate.substitution import layers_to_keep, substitution_costs

    student = build_student(tiny_llama, StudentConfig(hyena=HCFG, out_scale=0.0))
    with torch.no_grad():
        student.mixer(1).out_proj.bias.normal_(0, 5.0)  # layer 2's mixer writes large noise
    ids = torch.randint(0, 1000, (4, 16), generator=torch.Generator().manual_seed(0))
    costs = substitution_costs(tiny_llama, student, ids, batch_size=2)
    assert [c["layer"] for c in costs] == [0, 1, 2] and costs[0]["kl"] == 0.0
    assert all(c["kl"] >= 0 for c in costs) and costs[2]["kl"] > costs[1]["kl"]
    assert layers_to_keep(costs, 1) == [2]
    assert tiny_llama(input_ids=ids).logits.shape[-1] == 49152  # the teacher got its attention back
    assert type(get_adapter(tiny_llama).attention(get_adapter(tiny_llama).layers(tiny_llama)[1])).__name__ == "LlamaAttention"
