"""Decoding caches: the convolutional student's MixerCache gives the full forward's results, one
token per step, also with kept attention layers (hybrid) and with order-3 operators."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_llama_config, tiny_neox_config
from transformers import AutoModelForCausalLM

from hyena.model.build import StudentConfig, build_student
from hyena.model.cache import HyenaConvState, MixerCache, conv_forward
from hyena.model.operator import HyenaConfig, HyenaOperator

VOCAB = 512


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def tiny_student(family: str, seed: int = 0, **hyena):
    torch.manual_seed(seed)
    cfg = tiny_llama_config(vocab_size=VOCAB) if family == "llama" else tiny_neox_config(vocab_size=VOCAB)
    teacher = AutoModelForCausalLM.from_config(cfg).eval()
    return teacher, build_student(teacher, StudentConfig(hyena=HyenaConfig(max_len=256, **hyena)))


def greedy_by_full_forward(model, ids: torch.Tensor, steps: int) -> torch.Tensor:
    for _ in range(steps):
        nxt = model(input_ids=ids, use_cache=False).logits[:, -1].argmax(-1, keepdim=True)
        ids = torch.cat([ids, nxt], dim=1)
    return ids


def fed_lengths(model):
    """Record how many tokens each forward call of the model receives."""
    fed = []
    handle = model.register_forward_pre_hook(
        lambda _m, args, kwargs: fed.append(kwargs["input_ids"].shape[1]), with_kwargs=True)
    return fed, handle


@pytest.mark.parametrize("family", ["llama", "neox"])
@torch.no_grad()
def test_cached_generate_equals_full_forward_and_feeds_one_token(family):
    _, student = tiny_student(family)
    ids = torch.randint(3, VOCAB, (2, 11), generator=torch.Generator().manual_seed(1))
    want = greedy_by_full_forward(student, ids, 12)
    fed, handle = fed_lengths(student)
    try:
        out = student.generate(ids, max_new_tokens=12, min_new_tokens=12, do_sample=False, pad_token_id=0,
                               attention_mask=torch.ones_like(ids))
    finally:
        handle.remove()
    assert torch.equal(out, want)
    assert fed == [11] + [1] * 11, fed  # the prompt once, then one token a step


@torch.no_grad()
def test_prefill_chunks_and_steps_give_the_full_forward_logits():
    """Prompt, then a chunk of several tokens, then single tokens: the logits of every position
    match one stateless pass over the whole sequence; the history grows past its first capacity."""
    _, student = tiny_student("llama", seed=2)
    ids = torch.randint(3, VOCAB, (2, 150), generator=torch.Generator().manual_seed(3))
    full = student(input_ids=ids, use_cache=False).logits
    cache = student.new_cache()
    parts = [student(input_ids=ids[:, :40], cache=cache).logits,  # history capacity 64
             student(input_ids=ids[:, 40:100], cache=cache).logits]  # grows to 128
    parts += [student(input_ids=ids[:, t:t + 1], cache=cache).logits for t in range(100, 150)]  # to 256
    assert rel(torch.cat(parts, dim=1), full) < 1e-5
    assert cache.get_seq_length() == 150
    state = cache.layers[0]
    assert isinstance(state, HyenaConvState) and state.history.shape[-1] == 256
    d = student.config.hidden_size
    assert state.held_bytes() == 2 * 150 * d * 4 + state.fir.nbytes  # one filter's inputs per position


@pytest.mark.parametrize("order", [2, 3])
@torch.no_grad()
def test_operator_token_by_token_equals_stateless(order):
    torch.manual_seed(4)
    op = HyenaOperator(16, HyenaConfig(order=order, short_filter_len=4, max_len=128))
    u = torch.randn(3, 90, 16)
    want = op(u)
    state = HyenaConvState()
    got = [conv_forward(op, u[:, :7], state)]
    got += [conv_forward(op, u[:, t:t + 1], state) for t in range(7, 90)]
    assert rel(torch.cat(got, dim=1), want) < 1e-5
    assert state.seen == 90 and state.history.shape[:2] == (order - 1, 16)


@torch.no_grad()
def test_prompt_is_bitwise_the_stateless_pass():
    """The prefill runs exactly the stateless computation, so the prompt's logits are identical."""
    _, student = tiny_student("neox", seed=5)
    ids = torch.randint(3, VOCAB, (1, 33), generator=torch.Generator().manual_seed(6))
    assert torch.equal(student(input_ids=ids, cache=student.new_cache()).logits,
                       student(input_ids=ids, use_cache=False).logits)


@pytest.mark.parametrize("family", ["llama", "neox"])
@torch.no_grad()
def test_hybrid_cache_keeps_kv_at_attention_layers(family):
    """A student whose layer 1 kept the teacher's attention: the cache holds a KV layer there and a
    Hyena state elsewhere, and cached generation equals the full forward loop."""
    from transformers.cache_utils import DynamicLayer

    teacher, student = tiny_student(family, seed=7)
    adapter = student.adapter
    adapter.set_attention(student.decoder_layers()[1], adapter.attention(adapter.layers(teacher)[1]))
    cache = student.new_cache()
    assert isinstance(cache.layers[0], HyenaConvState) and isinstance(cache.layers[1], DynamicLayer)
    assert not cache.only_mixers()
    ids = torch.randint(3, VOCAB, (1, 9), generator=torch.Generator().manual_seed(8))
    want = greedy_by_full_forward(student, ids, 10)
    out = student.generate(ids, max_new_tokens=10, min_new_tokens=10, do_sample=False, pad_token_id=0,
                           attention_mask=torch.ones_like(ids))
    assert torch.equal(out, want)


def test_cache_kinds_are_checked():
    with pytest.raises(ValueError, match="unknown decoder layer kind"):
        MixerCache.for_kinds(["hyena", "mamba"])
    cache = MixerCache.for_kinds(["modal", "hyena"])
    with pytest.raises(TypeError, match="keys/values"):
        cache.update(torch.zeros(1), torch.zeros(1), 0)


@torch.no_grad()
def test_uncached_padded_forward_is_still_exact():
    """use_cache=False with left padding rotates each row (no cache, no mask in the mixers)."""
    _, student = tiny_student("llama", seed=9)
    ids = torch.randint(3, VOCAB, (2, 6), generator=torch.Generator().manual_seed(10))
    mask = torch.ones_like(ids)
    mask[0, :2] = 0
    logits = student(input_ids=ids, attention_mask=mask, use_cache=False).logits
    assert rel(logits[0, 2:], student(input_ids=ids[:1, 2:], use_cache=False).logits[0]) < 1e-5


@torch.no_grad()
def test_decode_layout_keeps_values_and_tokens_and_restores_on_exit(tmp_path):
    from hyena.model.generation import Sampling, decode_layout, generate

    _, student = tiny_student("llama", seed=11)
    ids = torch.randint(3, VOCAB, (1, 10), generator=torch.Generator().manual_seed(12))
    want_logits = student(input_ids=ids).logits
    want_tokens = greedy_by_full_forward(student, ids, 6)[:, 10:]
    before = {k: v.clone() for k, v in student.state_dict().items()}
    with decode_layout(student):
        w = student.mixer(0).in_proj.weight
        assert not w.is_contiguous() and w.mT.is_contiguous()  # stored as (in, out) rows
        assert all(torch.equal(before[k], v) for k, v in student.state_dict().items())
        assert student.get_output_embeddings().weight is student.get_input_embeddings().weight  # still tied
        assert rel(student(input_ids=ids).logits, want_logits) < 1e-6
    assert all(p.is_contiguous() for p in student.parameters())
    assert torch.equal(generate(student, ids, 6, Sampling(greedy=True))[0], want_tokens)  # the helper uses it
    student.save_pretrained(tmp_path)  # needs the standard layout back
    assert rel(type(student).from_pretrained(tmp_path)(input_ids=ids).logits, want_logits) < 1e-6
