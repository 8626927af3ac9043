"""Teachers: loading (Pythia config, SmolLM2 GGUF), adapters, and per-layer output capture."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import NEW_FAMILIES, TINY_CONFIGS, reference_qkv, tiny_teacher

from hyena.teachers import (
    attention_projections,
    capture_layer_outputs,
    get_adapter,
    load_teacher,
    load_tokenizer,
    teacher_record,
    weights_hash,
)

SENTENCE = "The quick brown fox jumps over the lazy dog because it was late for dinner."


@pytest.fixture(scope="module")
def pythia(pythia_dir):
    torch.manual_seed(0)
    return load_teacher(str(pythia_dir), config_only=True)


def test_pythia_config_has_published_size(pythia):
    assert sum(p.numel() for p in pythia.parameters()) == 70_426_624
    assert get_adapter(pythia).family == "gpt_neox"
    assert not any(p.requires_grad for p in pythia.parameters())
    assert not pythia.training


def _manual_layer_outputs(model, input_ids):
    """Embed, then call each layer by hand with rotary embeddings and an explicit causal mask."""
    base = model.gpt_neox
    L = input_ids.shape[1]
    h = base.embed_in(input_ids)  # (B, L, d)
    outs = [h]
    pos = torch.arange(L)[None]  # (1, L)
    cos_sin = base.rotary_emb(h, position_ids=pos)
    mask = torch.full((L, L), float("-inf")).triu(1)[None, None]  # (1, 1, L, L) additive, eager
    for layer in base.layers:
        h = layer(h, attention_mask=mask, position_ids=pos, position_embeddings=cos_sin)
        h = h[0] if isinstance(h, tuple) else h
        outs.append(h)
    return outs


@torch.no_grad()
def test_pythia_capture_equals_manual_forward(pythia, pythia_tokenizer):
    pythia.set_attn_implementation("eager")  # so the hand-built additive mask is the right format
    try:
        ids = pythia_tokenizer(SENTENCE, return_tensors="pt").input_ids
        captured = capture_layer_outputs(pythia, ids)
        manual = _manual_layer_outputs(pythia, ids)
        hidden = pythia(input_ids=ids, output_hidden_states=True).hidden_states
    finally:
        pythia.set_attn_implementation("sdpa")
    assert len(captured) == 1 + pythia.config.num_hidden_layers
    for got, want in zip(captured, manual, strict=True):
        assert got.shape == (1, ids.shape[1], pythia.config.hidden_size)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    # hidden_states agree except for the last entry, which HF passes through the final norm
    for got, want in zip(captured[:-1], hidden[:-1], strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(captured[-1], hidden[-1], atol=1e-3)
    torch.testing.assert_close(pythia.gpt_neox.final_layer_norm(captured[-1]), hidden[-1])


def test_pythia_tokenizer_is_neox(pythia_tokenizer):
    ids = pythia_tokenizer(SENTENCE).input_ids
    assert len(pythia_tokenizer) >= 50_277
    assert pythia_tokenizer.decode(ids) == SENTENCE


def test_neox_qkv_deinterleave_matches_attention(pythia):
    """The de-interleaved q/k/v are what the attention's own view+chunk produces."""
    attn = pythia.gpt_neox.layers[0].attention
    p = attention_projections(attn, pythia.config)
    u = torch.randn(2, 5, pythia.config.hidden_size)
    heads, hs = pythia.config.num_attention_heads, pythia.config.hidden_size // pythia.config.num_attention_heads
    qkv = attn.query_key_value(u).view(2, 5, heads, 3 * hs)
    q, k, v = (t.reshape(2, 5, -1) for t in qkv.chunk(3, dim=-1))  # how the forward splits it
    for got_w, got_b, want in ((p.q_weight, p.q_bias, q), (p.k_weight, p.k_bias, k), (p.v_weight, p.v_bias, v)):
        torch.testing.assert_close(u @ got_w.T + got_b, want, rtol=1e-5, atol=1e-5)
    naive_q = attn.query_key_value.weight.chunk(3)[0]  # wrong: assumes [Q; K; V] blocks
    assert not torch.allclose(naive_q, p.q_weight)


def test_llama_gqa_projections_repeat_kv(tiny_llama):
    cfg = tiny_llama.config
    attn = tiny_llama.model.layers[0].self_attn
    p = attention_projections(attn, cfg)
    d, hd = cfg.hidden_size, cfg.hidden_size // cfg.num_attention_heads
    groups = cfg.num_attention_heads // cfg.num_key_value_heads
    assert p.k_weight.shape == p.v_weight.shape == (d, d)
    for head in range(cfg.num_attention_heads):
        kv_head = head // groups  # repeat_kv: query head h reads kv head h // groups
        rows, kv_rows = slice(head * hd, (head + 1) * hd), slice(kv_head * hd, (kv_head + 1) * hd)
        assert torch.equal(p.k_weight[rows], attn.k_proj.weight[kv_rows])
        assert torch.equal(p.v_weight[rows], attn.v_proj.weight[kv_rows])
    assert p.q_bias is None and p.o_bias is None


def test_weights_hash_sees_weight_changes(tiny_neox):
    before = weights_hash(tiny_neox)
    with torch.no_grad():
        tiny_neox.gpt_neox.embed_in.weight[0, 0] += 1.0
    assert weights_hash(tiny_neox) != before


def test_smollm_gguf_loads_and_captures_all_layers(smollm_teacher, smollm_tokenizer):
    assert get_adapter(smollm_teacher).family == "llama"
    assert smollm_teacher.config.num_hidden_layers == 30
    assert smollm_teacher.lm_head.weight is smollm_teacher.model.embed_tokens.weight  # tied
    ids = smollm_tokenizer(SENTENCE, return_tensors="pt").input_ids
    outs = capture_layer_outputs(smollm_teacher, ids)
    assert len(outs) == 31  # embedding output + 30 layers
    for h in outs:
        assert h.shape == (1, ids.shape[1], 576)
        assert torch.isfinite(h).all()
    assert torch.equal(outs[0], smollm_teacher.model.embed_tokens(ids))
    # a real pretrained LM: the next word after a clear prefix is predicted well above chance
    with torch.no_grad():
        logits = smollm_teacher(input_ids=ids).logits
    nll = torch.nn.functional.cross_entropy(logits[0, :-1], ids[0, 1:])
    assert nll.item() < 6.0, f"SmolLM2 NLL {nll.item():.2f} nats/token: weights look wrong"


def test_unsupported_architecture_lists_supported(tmp_path):
    from transformers import OPTConfig

    OPTConfig(num_hidden_layers=1, hidden_size=32, num_attention_heads=2, ffn_dim=64).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="unsupported teacher architecture 'opt'; supported: gpt2, gpt_neox, llama, "
                                         "mistral, qwen2, qwen3"):
        load_teacher(str(tmp_path), config_only=True)


def test_unreachable_hub_id_says_pass_local_path(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(RuntimeError, match="pass a local directory or a .gguf file path"):
        load_teacher("EleutherAI/pythia-70m-nonexistent-test", config_only=True)
    with pytest.raises(RuntimeError, match="pass a local directory"):
        load_tokenizer("EleutherAI/pythia-70m-nonexistent-test")


def test_missing_local_paths_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="teacher GGUF file not found"):
        load_teacher(str(tmp_path / "nope.gguf"))
    with pytest.raises(FileNotFoundError, match="teacher directory not found"):
        load_teacher(str(tmp_path / "no_such_dir"))


def test_pythia_config_file_matches_published(pythia_dir):
    cfg = json.loads((pythia_dir / "config.json").read_text())
    assert cfg["model_type"] == "gpt_neox" and cfg["hidden_size"] == 512 and cfg["num_hidden_layers"] == 6


@pytest.mark.parametrize("family", sorted(TINY_CONFIGS))
def test_attention_output_equals_the_attention_inside_a_full_forward(family):
    """The attention-transfer target computed from a layer's input alone equals what the layer's
    attention produced inside the teacher's own forward pass (rotary positions, causality, and
    Mistral's sliding window, 8 positions here, shorter than the 24-token sequences)."""
    from hyena.teachers import attention_output

    model = tiny_teacher(family)
    adapter = get_adapter(model)
    ids = torch.randint(0, 500, (2, 24), generator=torch.Generator().manual_seed(0))
    seen = {}
    hooks = [adapter.attention(layer).register_forward_hook(
        lambda _m, _a, out, i=i: seen.__setitem__(i, out[0].detach())) for i, layer in enumerate(adapter.layers(model))]
    try:
        inputs = capture_layer_outputs(model, ids)
    finally:
        for h in hooks:
            h.remove()
    for i in range(len(adapter.layers(model))):
        torch.testing.assert_close(attention_output(model, i, inputs[i]), seen[i], rtol=1e-5, atol=1e-5)


def test_a_gguf_teacher_is_written_as_a_plain_hf_directory(smollm_gguf, smollm_teacher_dir, smollm_teacher):
    """The teacher stage dequantises a GGUF once (`save_teacher`, the session fixture); the written
    directory reloads to the weights the GGUF gave in memory (their hash, recorded before writing)
    with the GGUF's architecture and tokenizer (a GGUF-loaded model refuses save_pretrained unless
    its quantiser goes)."""
    from hyena.teachers import teacher_max_positions

    record = teacher_record(smollm_teacher_dir)
    assert record["source"] == str(smollm_gguf) and record["family"] == "llama" and record["n_layers"] == 30
    assert weights_hash(smollm_teacher) == record["weights_hash"]
    assert smollm_teacher.config.max_position_embeddings == teacher_max_positions(str(smollm_gguf)) == 8192
    assert not hasattr(smollm_teacher.config, "quantization_config")
    text = "Hello world"
    assert load_tokenizer(str(smollm_teacher_dir))(text)["input_ids"] == load_tokenizer(str(smollm_gguf))(text)["input_ids"]


# --- Qwen2, Qwen3, Mistral, GPT-2 --------------------------------------------------------------


def _manual_forward(model, ids, window: int | None = None) -> list[torch.Tensor]:
    """Embed by hand (GPT-2: token + learned position embeddings), then call each decoder layer
    with rotary embeddings where the family has them and an explicit additive causal mask
    (banded to `window` positions when given)."""
    L = ids.shape[1]
    pos = torch.arange(L)[None]  # (1, L)
    q, k = torch.arange(L)[:, None], torch.arange(L)[None, :]
    hidden = (k > q) | (k <= q - window) if window else k > q
    mask = torch.zeros(L, L).masked_fill(hidden, float("-inf"))[None, None]  # (1, 1, L, L)
    if model.config.model_type == "gpt2":
        base = model.transformer
        h, layers, extra = base.wte(ids) + base.wpe(pos), base.h, {}
    else:
        base = model.model
        h, layers = base.embed_tokens(ids), base.layers
        extra = {"position_embeddings": base.rotary_emb(h, position_ids=pos), "position_ids": pos}
    outs = [h]
    for layer in layers:
        h = layer(h, attention_mask=mask, **extra)
        h = h[0] if isinstance(h, tuple) else h
        outs.append(h)
    return outs


@pytest.mark.parametrize("family", NEW_FAMILIES)
@torch.no_grad()
def test_new_family_capture_equals_manual_forward(family):
    model = tiny_teacher(family)
    ids = torch.randint(0, 500, (2, 20), generator=torch.Generator().manual_seed(1))
    captured = capture_layer_outputs(model, ids)  # the model's own sdpa forward
    window = getattr(model.config, "sliding_window", None)
    model.set_attn_implementation("eager")  # the hand-built additive mask, eager maths
    manual = _manual_forward(model, ids, window)
    assert len(captured) == 1 + model.config.num_hidden_layers
    for got, want in zip(captured, manual, strict=True):
        assert got.shape == (2, 20, 64)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    if family == "gpt2":  # entry 0 is what layer 1 receives: the position embeddings are in it
        assert not torch.allclose(captured[0], model.transformer.wte(ids), atol=1e-3)
    if family == "mistral":  # the window is shorter than the sequence, and it matters
        assert window < ids.shape[1]
        assert not torch.allclose(_manual_forward(model, ids)[-1], captured[-1], atol=1e-3)


@pytest.mark.parametrize("family", NEW_FAMILIES)
@torch.no_grad()
def test_new_family_projections_are_what_the_attention_computes(family):
    """Q/K/V/O at full width reproduce the teacher's own q, k, v (biases included, K/V repeated
    per query head) and output projection. Qwen3 normalises each head of q and k by its RMS,
    which no linear map reproduces: there the rows carry the norm's scale and must point the
    same way as the teacher's normalised q and k, head by head."""
    model = tiny_teacher(family)
    cfg = model.config
    attn = get_adapter(model).attention(get_adapter(model).layers(model)[1])
    p = attention_projections(attn, cfg)
    u = torch.randn(2, 7, cfg.hidden_size)
    q, k, v, o_w, o_b = reference_qkv(attn, cfg, u)

    def apply(w, b):
        return u @ w.T + (b if b is not None else 0.0)

    got_q, got_k, got_v = apply(p.q_weight, p.q_bias), apply(p.k_weight, p.k_bias), apply(p.v_weight, p.v_bias)
    torch.testing.assert_close(got_v, v, rtol=1e-5, atol=1e-5)
    if family == "qwen3":
        heads = cfg.num_attention_heads

        def per_head(t):
            return torch.nn.functional.normalize(t.view(2, 7, heads, -1), dim=-1)

        torch.testing.assert_close(per_head(got_q), per_head(q), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(per_head(got_k), per_head(k), rtol=1e-5, atol=1e-5)
        gamma = attn.q_norm.weight
        assert not torch.allclose(gamma, torch.ones_like(gamma))  # a scale to fold in, not all ones
        unfolded = per_head(u @ attn.q_proj.weight.T)
        assert not torch.allclose(unfolded, per_head(q), atol=1e-3)  # leaving the scale out is wrong
    else:
        torch.testing.assert_close(got_q, q, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(got_k, k, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(p.o_weight, o_w)
    assert (p.o_bias is None) == (o_b is None)
    if family == "qwen2":
        assert p.q_bias is not None and p.k_bias is not None and p.v_bias is not None
    if family == "gpt2":  # the Conv1D weight read as if it were a Linear weight: wrong
        d = cfg.hidden_size
        naive = u @ attn.c_attn.weight[:, :d] + attn.c_attn.bias[:d]  # (d, d) block, not transposed
        assert attn.c_attn.weight.shape == (d, 3 * d)
        assert not torch.allclose(u @ attn.c_attn.weight[:, :d].T + attn.c_attn.bias[:d], q, atol=1e-3)
        torch.testing.assert_close(naive, q, rtol=1e-5, atol=1e-5)


def _write_gguf(path, value: int) -> None:
    import gguf
    import numpy as np

    w = gguf.GGUFWriter(str(path), "llama")
    w.add_uint32("test.value", value)
    w.add_tensor("token_embd.weight", np.full((4, 8), value, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def test_gguf_parses_are_shared_while_the_file_is_unchanged(tmp_path):
    """transformers builds a GGUFReader per config, weights and tokenizer: within
    `shared_gguf_parses` each is the first parse of that file, a rewritten file is parsed anew, and
    gguf's own names are restored afterwards."""
    import os

    import gguf

    from hyena.teachers.gguf_cache import shared_gguf_parses

    path = tmp_path / "m.gguf"
    _write_gguf(path, 1)
    original = gguf.GGUFReader, gguf.get_tensor_name_map
    with shared_gguf_parses():
        first = gguf.GGUFReader(str(path))
        assert gguf.GGUFReader(path) is first and first.fields["test.value"].contents() == 1
        assert gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, 2) is gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, 2)
        _write_gguf(path, 2)
        os.utime(path, ns=(1, 2))  # a rewrite within the clock's resolution still changes mtime
        again = gguf.GGUFReader(str(path))
        assert again is not first and again.fields["test.value"].contents() == 2
        assert float(again.tensors[0].data[0, 0]) == 2.0
    assert (gguf.GGUFReader, gguf.get_tensor_name_map) == original
