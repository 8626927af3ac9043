"""MultiHyena (hyena/multihyena.py): causality, every computation path against the definition,
initialisation from each family's attention, and its place in the student."""

from __future__ import annotations

import pytest
import torch
from conftest import NEW_FAMILIES, reference_qkv, tiny_llama_config, tiny_neox_config, tiny_teacher

from hyena.model.multihyena import (
    MultiHyenaOperator,
    filter_support,
    head_layout,
    init_from_attention,
    mix,
    mix_fft,
    mix_loop,
    mix_quadratic,
)
from hyena.model.operator import HyenaConfig, causality_violation
from hyena.teachers import get_adapter

HCFG = HyenaConfig(max_len=64, decay_len=16)


def make_op(d: int = 32, heads: int = 4, kv_heads: int = 2, path: str = "auto", seed: int = 0) -> MultiHyenaOperator:
    torch.manual_seed(seed)
    op = MultiHyenaOperator(d, heads, kv_heads, HCFG, path=path)
    with torch.no_grad():  # a non-trivial short conv and pass-through, so both are exercised
        op.short_filter.weight.normal_()
    return op


def random_qkvh(B=2, H=4, G=2, L=29, N=8, extra=3, seed=0):
    g = torch.Generator().manual_seed(seed)

    def r(*s):
        return torch.randn(*s, generator=g, dtype=torch.float64)

    return r(B, H, L, N), r(B, G, L, N), r(B, G, L, N), r(H, L + extra)


# --- the mix against its definition ---------------------------------------------------------------


@pytest.mark.parametrize("G", [1, 2, 4])
def test_every_path_equals_the_loop(G):
    q, k, v, h = random_qkvh(G=G)
    want = mix_loop(q, k, v, h)
    for got in (mix_quadratic(q, k, v, h), mix_quadratic(q, k, v, h, block=5), mix_fft(q, k, v, h),
                mix(q, k, v, h, "quadratic"), mix(q, k, v, h, "fft"), mix(q, k, v, h, "banded"), mix(q, k, v, h)):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("block", [3, 8, None])
def test_banded_form_equals_the_loop_for_filters_that_die_out(block):
    """Filters zero past tap 9: the banded form reads only the keys within 9 of each query."""
    q, k, v, h = random_qkvh(L=37)
    h[:, 9:] = 0
    assert filter_support(h) == 9
    want = mix_loop(q, k, v, h)
    torch.testing.assert_close(mix_quadratic(q, k, v, h, window=9, block=block), want, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(mix(q, k, v, h, "banded"), want, rtol=1e-10, atol=1e-10)


def test_auto_path_choice(monkeypatch):
    import hyena.model.multihyena as mh

    q, k, v, h = random_qkvh(L=20)
    calls = []
    monkeypatch.setattr(mh, "mix_fft", lambda *a: calls.append("fft"))
    monkeypatch.setattr(mh, "mix_quadratic", lambda *a, window=None: calls.append(("quad", window)))
    mh.mix(q, k, v, h)  # filters alive over all 20 taps, short: quadratic
    monkeypatch.setattr(mh, "QUADRATIC_MAX_LEN", 8)
    mh.mix(q, k, v, h)  # long: FFT
    h[:, 10:] = 0
    mh.mix(q, k, v, h)  # dead after 10 of 20 taps: banded
    assert calls == [("quad", None), "fft", ("quad", 10)]


def test_fft_path_in_value_column_blocks(monkeypatch):
    import hyena.model.multihyena as mh

    q, k, v, h = random_qkvh()
    monkeypatch.setattr(mh, "FFT_ELEMENTS", 1)  # one value column at a time
    torch.testing.assert_close(mix_fft(q, k, v, h), mix_loop(q, k, v, h), rtol=1e-10, atol=1e-10)


def test_quadratic_continues_from_an_offset():
    """Queries of positions start.. against all keys so far: what cached decoding computes."""
    q, k, v, h = random_qkvh()
    want = mix_loop(q, k, v, h)
    for start in (0, 1, 17, 28):
        got = mix_quadratic(q[:, :, start:], k, v, h, start=start, block=4)
        torch.testing.assert_close(got, want[:, :, start:], rtol=1e-10, atol=1e-10)


def test_gradients_of_both_paths_agree():
    q, k, v, h = (t.requires_grad_(True) for t in random_qkvh(L=13))
    grads = []
    for path in ("quadratic", "fft"):
        (mix(q, k, v, h, path) ** 2).sum().backward()
        grads.append([t.grad.clone() for t in (q, k, v, h)])
        for t in (q, k, v, h):
            t.grad = None
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


# --- the operator -------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["quadratic", "fft"])
def test_operator_is_causal(path):
    """Exactly zero for the masked form; FFT round-off (~1e-16) for the FFT form."""
    leak = causality_violation(make_op(path=path).double(), 32, L=24)
    assert leak == 0.0 if path == "quadratic" else leak < 1e-12


def test_operator_paths_agree_and_features_feed_the_readout():
    u = torch.randn(2, 40, 32, dtype=torch.float64)
    a, b = make_op(path="quadratic").double(), make_op(path="fft").double()
    torch.testing.assert_close(a(u), b(u), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(a.out_proj(a.features(u).mT), a(u))


def test_operator_equals_the_definition_by_hand():
    """Projection, causal short conv, per-head mix with the pass-through on the diagonal, W_o."""
    op = make_op().double()
    u = torch.randn(2, 11, 32, dtype=torch.float64)
    p = op.in_proj(u).mT  # (B, C, L)
    K = op.short_filter.kernel_size[0]
    z = op.short_filter(p)[..., : u.shape[1]]  # Conv1d padded K-1 both sides: keep the causal first L
    assert K == 3
    q, k, v = op.split_heads(z)
    h = op.filter_fn(11)[0].clone()
    h[:, 0] += op.filter_fn.bias[0]
    want = op.out_proj(mix_loop(q, k, v, h).transpose(1, 2).reshape(2, 11, 32))
    torch.testing.assert_close(op(u), want, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("d, heads, kv", [(30, 4, 1), (32, 4, 3), (32, 0, 1)])
def test_bad_head_layouts_are_one_line_errors(d, heads, kv):
    with pytest.raises(ValueError, match="student.(kv_)?heads"):
        head_layout(d, heads, kv)


def test_filter_envelope_makes_decaying_positive_filters():
    op = make_op()
    err = op.fit_filter_envelope()
    h = op.filters(64).detach()
    assert err < 1e-3
    assert (h > 0).all() and (h[:, 1:] <= h[:, :-1] + 1e-6).all()  # positive, non-increasing


def test_filter_envelope_is_the_same_bits_whatever_the_memory_layout():
    """The envelope fit is ill-conditioned (many solutions fit to ~1e-8): CPU lstsq returned
    different weights from run to run with the memory layout, and every later stage inherited the
    difference. Twelve fits of the SmolLM2-sized mixer behind different allocations must agree."""
    from hyena.model.operator import HyenaConfig

    seen = set()
    for shift in range(12):
        pad = [torch.empty(37 * shift + 1, dtype=torch.float64) for _ in range(3)]  # moves the next allocations
        torch.manual_seed(0)
        op = MultiHyenaOperator(576, 9, 3, HyenaConfig(decay_len=64))
        op.fit_filter_envelope()
        seen.add(op.filter_fn.ffn[-1].weight.detach().numpy().tobytes())
        del pad
    assert len(seen) == 1


# --- initialisation from the teacher's attention ----------------------------------------------------


def _neox_reference(attn, config, u):
    """q, k, v (B, L, d) of a GPT-NeoX attention as its forward splits the fused, per-head
    interleaved projection; plus W_o and b_o."""
    B, L, _ = u.shape
    heads = config.num_attention_heads
    qkv = attn.query_key_value(u).view(B, L, heads, -1)  # (B, L, heads, 3 hd)
    q, k, v = (t.reshape(B, L, -1) for t in qkv.chunk(3, dim=-1))
    return q, k, v, attn.dense.weight, attn.dense.bias


def _teacher(family: str):
    from transformers import AutoModelForCausalLM

    if family in NEW_FAMILIES:
        return tiny_teacher(family)
    torch.manual_seed(0)
    config = tiny_neox_config(vocab_size=512) if family == "gpt_neox" else tiny_llama_config(vocab_size=512)
    return AutoModelForCausalLM.from_config(config).eval()


@pytest.mark.parametrize("family", ["gpt_neox", "llama", "qwen2", "mistral", "gpt2"])
@torch.no_grad()
def test_init_is_the_teachers_attention_with_softmax_replaced_by_h(family):
    """y = W_O sum_s h[t-s] (q_t . k_s / sqrt(N)) v_s with the teacher's own q, k, v (GQA
    repeated, GPT-2 de-fused, NeoX de-interleaved), the student's filter h and no rotary."""
    teacher = _teacher(family)
    cfg = teacher.config
    attn = get_adapter(teacher).attention(get_adapter(teacher).layers(teacher)[1])
    heads = cfg.num_attention_heads
    op = MultiHyenaOperator(cfg.hidden_size, heads, getattr(cfg, "num_key_value_heads", None) or heads, HCFG)
    init_from_attention(op, attn, cfg)
    u = torch.randn(2, 9, cfg.hidden_size)
    ref = _neox_reference if family == "gpt_neox" else reference_qkv
    q, k, v, o_w, o_b = ref(attn, cfg, u)
    N = cfg.hidden_size // heads
    split = lambda t: t.view(2, 9, heads, N).transpose(1, 2).double()  # noqa: E731
    y = mix_loop(split(q) / N ** 0.5, split(k), split(v), op.filters(9).double())  # (B, H, L, N)
    want = torch.nn.functional.linear(y.transpose(1, 2).reshape(2, 9, -1).float(), o_w, o_b)
    torch.testing.assert_close(op(u), want, rtol=1e-4, atol=1e-5)


def test_init_refuses_other_head_counts():
    teacher = _teacher("llama")
    attn = get_adapter(teacher).attention(get_adapter(teacher).layers(teacher)[0])
    with pytest.raises(ValueError, match="differ from the teacher"):
        init_from_attention(MultiHyenaOperator(64, 8, 8, HCFG), attn, teacher.config)


# --- Laughing Hyena: modal filters per head, recurrent decoding ---------------------------------------


def _recurrent(order: int = 8):
    from hyena.recurrence.modal import ModalFitConfig
    from hyena.recurrence.multihyena import to_recurrent_multihyena

    op = make_op().double().float()
    return op, *to_recurrent_multihyena(op, 64, ModalFitConfig(order=order, steps=0))


@torch.no_grad()
def test_recurrent_equals_convolutional_with_the_modal_filters():
    """Chunks and single tokens through the state == one stateless pass with the modal kernel."""
    from hyena.recurrence.multihyena import MultiHyenaModalState

    op, rec, report = _recurrent()
    assert report["filter_rel_l2_max"] < 1e-2
    u = torch.randn(2, 40, 32)
    whole, _ = rec(u)
    direct = op.out_proj(mix(*op.split_heads(op.projections(u)), rec.filters(40)).transpose(1, 2).reshape(2, 40, 32))
    torch.testing.assert_close(whole, direct, rtol=1e-4, atol=1e-5)
    state = MultiHyenaModalState()
    parts = [rec.chunk(u[:, :17], state), rec.chunk(u[:, 17:30], state)]
    parts += [rec.chunk(u[:, t:t + 1], state) for t in range(30, 40)]
    torch.testing.assert_close(torch.cat(parts, dim=1), whole, rtol=1e-4, atol=1e-5)
    assert state.seen == 40 and state.S.shape == (2, 4, 8, 8, 8)  # (B, H, modes, N, N)
    for grad in (True, False):  # the one-token step path; generate() runs it without grad, in place
        with torch.set_grad_enabled(grad):
            stepped = MultiHyenaModalState()
            parts = [rec.chunk(u[:, :30], stepped)] + [rec.step(u[:, t:t + 1], stepped) for t in range(30, 40)]
        torch.testing.assert_close(torch.cat(parts, dim=1), whole, rtol=1e-4, atol=1e-5)


@torch.no_grad()
def test_recurrent_is_close_to_the_operator_it_was_fitted_to():
    op, rec, _ = _recurrent(order=12)
    u = torch.randn(2, 48, 32)
    y, ref = rec(u)[0], op(u)
    assert ((y - ref).norm() / ref.norm()).item() < 1e-3


def test_state_size_table_matches_the_formula():
    from hyena.recurrence.multihyena import state_bytes_table

    rows = state_bytes_table(30, 9, 3, 64, 16, lengths=(1024,))
    assert rows[0]["multihyena_state_mb"] == 30 * 9 * 16 * 64 * 64 * 8 / 2**20  # 135 MiB, whatever the length
    assert rows[0]["kv_cache_mb"] == 2 * 30 * 3 * 64 * 1024 * 4 / 2**20  # 45 MiB at 1K tokens


@torch.no_grad()
def test_cached_decoding_equals_the_stateless_pass():
    """Prompt, chunk and single tokens through the KV state == one pass over the whole sequence."""
    from hyena.model.cache import MultiHyenaKVState
    from hyena.model.multihyena_mixer import MultiHyenaMixer

    torch.manual_seed(0)
    m = MultiHyenaMixer(32, 4, 2, HCFG)
    m.short_filter.weight.normal_()
    u = torch.randn(2, 40, 32)
    whole, _ = m(u)
    state = MultiHyenaKVState()
    parts = [m.cached(u[:, :17], state), m.cached(u[:, 17:30], state)]
    parts += [m.cached(u[:, t:t + 1], state) for t in range(30, 40)]
    torch.testing.assert_close(torch.cat(parts, dim=1), whole, rtol=1e-5, atol=1e-6)
    assert state.nbytes() == 2 * (2 * 2 * 40 * 8) * 4 + state.fir.numel() * 4  # keys+values (B, G, 40, N), fp32


# --- the student ----------------------------------------------------------------------------------


def _student(family: str = "llama", **cfg):
    from hyena.model.build import StudentConfig, build_student

    teacher = _teacher(family)
    cfg.setdefault("init", "teacher_attention")
    return teacher, build_student(teacher, StudentConfig(mixer="multihyena", hyena=HCFG, **cfg))


@torch.no_grad()
def test_student_round_trips_through_save_pretrained(tmp_path):
    from transformers import AutoModelForCausalLM

    from hyena.model.multihyena_mixer import MultiHyenaMixer

    _, student = _student()
    student.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert isinstance(loaded.mixer(0), MultiHyenaMixer) and (loaded.config.heads, loaded.config.kv_heads) == (4, 2)
    ids = torch.randint(0, 512, (2, 13))
    torch.testing.assert_close(loaded(input_ids=ids).logits, student(input_ids=ids).logits, rtol=0, atol=0)


@torch.no_grad()
def test_generate_with_the_cache_equals_the_argmax_loop():
    _, student = _student()
    ids = torch.randint(0, 512, (1, 7))
    out = student.generate(ids, max_new_tokens=6, do_sample=False)
    seq = ids
    for _ in range(6):
        nxt = student(input_ids=seq, use_cache=False).logits[:, -1].argmax(-1, keepdim=True)
        seq = torch.cat([seq, nxt], dim=1)
    assert torch.equal(out, seq)


@torch.no_grad()
def test_hybrid_keeps_the_listed_attention():
    from hyena.model.multihyena_mixer import MultiHyenaMixer

    teacher, student = _student(keep_attention=[2])
    assert isinstance(student.mixer(0), MultiHyenaMixer) and not isinstance(student.mixer(1), MultiHyenaMixer)
    ids = torch.randint(0, 512, (1, 9))
    assert student(input_ids=ids).logits.shape == (1, 9, 512)
    assert torch.equal(student.generate(ids, max_new_tokens=3, do_sample=False)[:, :9], ids)


def test_parameter_report_counts_the_multihyena_mixer():
    from hyena.model.build import parameter_report

    teacher, student = _student(family="gpt2")
    r = parameter_report(teacher, student)
    m = student.mixer(0)
    assert r["mixer"] == "multihyena" and r["per_mixer"] == sum(p.numel() for p in m.parameters())
    assert r["student_total"] == r["shared"] + 2 * r["per_mixer"]
    # q, k, v, o at the teacher's size (GPT-2: no GQA) plus short conv and the per-head filter
    assert r["per_mixer"] == r["per_attention"] + 3 * 64 * 4 + r["per_mixer_filter"]


def test_random_init_and_other_head_counts():
    _, student = _student(init="random", heads=8, kv_heads=2)
    m = student.mixer(0)
    assert (m.heads, m.kv_heads, m.head_dim) == (8, 2, 8)
    assert student(input_ids=torch.randint(0, 512, (1, 5))).logits.isfinite().all()


@pytest.mark.parametrize("cfg, match", [({"heads": 5}, "student.heads"), ({"heads": 4, "kv_heads": 3}, "student.kv_heads")])
def test_bad_heads_are_one_line_errors(cfg, match):
    with pytest.raises(ValueError, match=match):
        _student(init="random", **cfg)


def test_heads_without_multihyena_are_refused():
    from hyena.model.build import StudentConfig

    with pytest.raises(ValueError, match="mixer: multihyena"):
        StudentConfig(heads=4)


def test_least_squares_readout_and_gradient_steps_fit_the_attention_output():
    """Attention transfer as the distill stage runs it: readout solve, steps on q/k/v and filters,
    readout again."""
    import numpy as np

    from hyena.core.dist import DistEnv
    from hyena.teachers import attention_output
    from hyena.train.distill import (
        ComputedTargets,
        DistillConfig,
        MixerOnly,
        distill_layer,
        fit_readout,
    )

    teacher, student = _student()
    layer = student.decoder_layers()[1]
    mixer = student.mixer(1)
    fn = MixerOnly(student.adapter.input_norm(layer), mixer)
    torch.manual_seed(0)
    x = np.random.default_rng(0).standard_normal((12, 24, 64)).astype(np.float32)
    target = ComputedTargets(x, lambda t: attention_output(teacher, 1, t), torch.device("cpu"))
    cfg = DistillConfig(epochs=3, lr=3e-3, batch_size=4, input="teacher", target="mixer_output",
                        readout="least_squares")
    mixer.requires_grad_(True)
    mixer.out_proj.requires_grad_(False)
    env = DistEnv()
    before = mixer.in_proj.weight.detach().clone()
    y = target.take_rows(np.arange(8))
    r = distill_layer(fn, x[:8], y, x[:8], y, cfg, env,  # scored on the fitted rows: the solve's own residual
                      readout=lambda: fit_readout(mixer, fn.norm, x[:8], y, cfg, env))
    assert r["val_nmse_before"] < 0.9
    assert r["steps"] == 6 and not torch.equal(mixer.in_proj.weight, before) and np.isfinite(r["val_nmse"])


@torch.no_grad()
def test_recurrent_student_matches_the_student_and_decodes_its_own_logits(tmp_path):
    """to_recurrent fits every head's filter; the recurrent student's logits follow the student's,
    its cached generate equals its own argmax loop, and it round-trips through save_pretrained."""
    from transformers import AutoModelForCausalLM

    from hyena.recurrence import RecurrentConfig, to_recurrent
    from hyena.recurrence.modal import ModalFitConfig
    from hyena.recurrence.multihyena import RecurrentMultiHyena

    _, student = _student()
    rec, reports = to_recurrent(student, RecurrentConfig(fit_len=64, fit=ModalFitConfig(order=12, steps=0)), progress=False)
    assert isinstance(rec.mixer(0), RecurrentMultiHyena) and len(reports) == 2
    ids = torch.randint(0, 512, (1, 20))
    a, b = rec(input_ids=ids).logits, student(input_ids=ids).logits
    assert ((a - b).norm() / b.norm()).item() < 1e-3
    out = rec.generate(ids[:, :8], max_new_tokens=5, do_sample=False)
    seq = ids[:, :8]
    for _ in range(5):
        seq = torch.cat([seq, rec(input_ids=seq, use_cache=False).logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(out, seq)
    rec.save_pretrained(tmp_path)
    again = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    torch.testing.assert_close(again(input_ids=ids).logits, a, rtol=0, atol=0)
