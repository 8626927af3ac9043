"""Laughing Hyena: modal fit, recurrent decoding, and generation with the recurrent student."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import TINY_CONFIGS, tiny_llama_config, tiny_neox_config, tiny_teacher

from hyena.model.fftconv import fft_causal_conv
from hyena.model.operator import HyenaConfig, HyenaFilter, HyenaOperator
from hyena.recurrence import ModalFilter, ModalFitConfig, fit_modal
from hyena.recurrence.checks import layer_output_errors
from hyena.recurrence.mixer import HyenaRecurrentCache, RecurrentHyenaMixer
from hyena.recurrence.model import HyenaRecurrentForCausalLM, RecurrentConfig, to_recurrent


def random_modal(shape, N, seed=0, r=(0.7, 0.99)) -> ModalFilter:
    g = torch.Generator().manual_seed(seed)
    m = ModalFilter(shape, N)
    radius = torch.empty(*shape, N).uniform_(*r, generator=g)
    theta = torch.rand(*shape, N, generator=g) * math.pi
    R = torch.complex(torch.randn(*shape, N, generator=g), torch.randn(*shape, N, generator=g)) / N
    m.set_modes(-torch.log(radius), theta, R, torch.randn(*shape, generator=g))
    return m


def impulse(m, L: int) -> torch.Tensor:
    """The full filter h[0..L-1] of a ModalFilter, pass-through included."""
    k = m.tail_kernel(L).clone()
    k[..., 0] = m.D
    return k


def rel(a, b) -> float:
    return float((a - b).norm() / b.norm())


def test_fit_recovers_an_exact_sum_of_modes():
    N, L = 6, 300
    true = random_modal((24,), N, seed=1)
    with torch.no_grad():
        h = impulse(true, L)
    fitted, report = fit_modal(h, ModalFitConfig(order=N, steps=0))
    assert report["filter_rel_l2_median"] < 1e-5 and report["filter_rel_l2_max"] < 1e-3
    with torch.no_grad():  # right poles, not just a good fit: the response extrapolates past L
        assert rel(impulse(fitted, 3 * L), impulse(true, 3 * L)) < 1e-4
        assert torch.equal(fitted.D, true.D)
        assert bool((fitted.poles().abs() < 1).all())


def test_fit_adam_refinement_does_not_worsen_and_poles_stay_inside():
    torch.manual_seed(0)
    h = torch.randn(8, 64).cumsum(-1) * torch.exp(-torch.arange(64) / 20.0)  # not modal
    _, r0 = fit_modal(h, ModalFitConfig(order=4, steps=0))
    m, r1 = fit_modal(h, ModalFitConfig(order=4, steps=30, refine_tol=0.0))
    assert r1["filter_rel_l2_mean"] <= r0["filter_rel_l2_mean"] * 1.001
    assert r1["refined_channels"] == 8 and bool((m.poles().abs() < 1).all())


@pytest.mark.parametrize("start,T", [(0, 1), (0, 37), (5, 300), (20000, 1000)])
def test_blocked_modal_sums_match_materialised_powers(start, T):
    """modal_response / modal_absorb never build the (C, N, T) powers; they match sums over them."""
    from hyena.recurrence.modal import modal_absorb, modal_powers, modal_response

    g = torch.Generator().manual_seed(T)
    C, M, N = 6, 3, 4
    decay = torch.rand(C, N, generator=g) * 1e-3 + 1e-5  # slow poles: still large at t = start + T
    theta = torch.rand(C, N, generator=g) * math.pi
    coef = torch.complex(torch.randn(C, M, N, generator=g), torch.randn(C, M, N, generator=g))
    V = modal_powers(decay, theta, start, T, torch.complex128)  # (C, N, T)
    want = torch.einsum("cmn,cnt->cmt", coef.to(torch.complex128), V).real
    assert rel(modal_response(coef, decay, theta, start, T).double(), want) < 1e-5
    w = torch.randn(C, M, T, generator=g, dtype=torch.float64)
    back = modal_powers(decay, theta, 0, T, torch.complex128).flip(-1)  # p^(T-1-t)
    want_state = torch.einsum("cmt,cnt->cmn", w.to(torch.complex128), back)
    assert rel(modal_absorb(w, decay, theta).to(torch.complex128), want_state) < 1e-5


@pytest.mark.parametrize("M", [1, 65, 700])
def test_closed_form_fit_products_match_the_explicit_matrices(M):
    """The fits solve with Gram matrices formed in closed form (geometric sums, Hankel diagonal
    recursions) instead of the design and Hankel matrices; they equal the explicit products,
    including real poles, a repeated pole and the slowest decay allowed."""
    from hyena.recurrence.modal import _design, _design_gram, _design_rhs, _hankel_gram

    g = torch.Generator().manual_seed(M)
    C, N = 5, 6
    decay = torch.rand(C, N, generator=g, dtype=torch.float64) * 0.05 + 1e-6
    decay[0, 0] = 1e-6
    theta = torch.rand(C, N, generator=g, dtype=torch.float64) * math.pi
    theta[:, 1] = 0.0  # real poles: their -Im columns are zero
    decay[1, 3], theta[1, 3] = decay[1, 2], theta[1, 2]  # a repeated pole
    A = _design(decay, theta, M)  # (C, M, 2N)
    G = A.transpose(1, 2) @ A
    assert rel(_design_gram(decay, theta, M), G) < 1e-12
    y = torch.randn(C, M, generator=g, dtype=torch.float64)
    assert rel(_design_rhs(decay, theta, y), (A.transpose(1, 2) @ y[..., None])[..., 0]) < 1e-12
    if M > 40:
        H = y.unfold(-1, 41, 1)  # (C, M-40, 41) Hankel rows
        assert rel(_hankel_gram(y, 40), H.transpose(1, 2) @ H) < 1e-12


def test_poles_strictly_inside_unit_circle_in_fp32():
    m = ModalFilter((3,), 2)
    with torch.no_grad():
        m.log_decay.fill_(-200.0)  # decay -> min_decay: the slowest pole representable
    assert float(m.poles().detach().abs().max()) < 1.0
    with pytest.raises(ValueError, match="min_decay"):
        ModalFilter((3,), 2, min_decay=1e-9)


def _reference(op: HyenaOperator, modal: ModalFilter, u: torch.Tensor) -> torch.Tensor:
    """The operator's own maths (fft_causal_conv per order step) with the modal filters."""
    x, v = op.gates(u)
    h = modal.tail_kernel(u.shape[1])
    for o, x_i in enumerate(reversed(x[1:])):
        v = fft_causal_conv(v * x_i, h[o], modal.D[o])
    return op.out_proj((v * x[0]).transpose(1, 2))


@torch.no_grad()
def test_recurrence_reproduces_fft_convolution():
    torch.manual_seed(0)
    d, L = 16, 160
    op = HyenaOperator(d, HyenaConfig(order=3, max_len=256))
    mixer = RecurrentHyenaMixer.from_operator(op, random_modal((2, d), 4))
    u = torch.randn(2, L, d)
    ref = _reference(op, mixer.modal, u)
    assert rel(mixer(u)[0], ref) < 1e-5  # stateless path
    cache = HyenaRecurrentCache(1)
    steps = torch.cat([mixer(u[:, t : t + 1], cache=cache)[0] for t in range(L)], dim=1)
    assert rel(steps, ref) < 1e-5
    assert cache.get_seq_length() == L


@torch.no_grad()
def test_prefill_then_steps_equals_token_by_token():
    torch.manual_seed(1)
    d, L, P = 8, 96, 57
    op = HyenaOperator(d, HyenaConfig(order=2, short_filter_len=4, max_len=128))
    mixer = RecurrentHyenaMixer.from_operator(op, random_modal((1, d), 5, seed=3))
    u = torch.randn(3, L, d)
    by_token = HyenaRecurrentCache(1)
    ys_a = torch.cat([mixer(u[:, t : t + 1], cache=by_token)[0] for t in range(L)], dim=1)
    prefilled = HyenaRecurrentCache(1)
    ys_b = [mixer(u[:, :P], cache=prefilled)[0], mixer(u[:, P : P + 20], cache=prefilled)[0]]
    ys_b += [mixer(u[:, t : t + 1], cache=prefilled)[0] for t in range(P + 20, L)]
    ys_b = torch.cat(ys_b, dim=1)
    assert rel(ys_b, ys_a) < 1e-5
    a, b = by_token.layers[0], prefilled.layers[0]
    assert rel(b.modal, a.modal) < 1e-5 and torch.allclose(b.fir, a.fir, atol=1e-6)
    assert a.nbytes() == mixer.state_bytes(batch=3)


class ExactModalFilter(HyenaFilter):
    """A student's implicit filter whose generator returns exactly a modal filter (the operator's
    caching and FFT path stay as they are), so the convolutional student is exactly
    representable by the recurrent one."""
    def __init__(self, modal: ModalFilter, old: HyenaFilter):
        super().__init__(old.d_model, old.n_filters, old.cfg)
        self.modal = modal
        with torch.no_grad():
            self.bias.copy_(old.bias)

    def _generate(self, L: int) -> torch.Tensor:
        h = self.modal.tail_kernel(L).clone()  # (n_filters, d, L)
        h[..., 0] = self.modal.D - self.bias  # the operator adds the bias back as pass-through
        return h


@pytest.fixture(params=sorted(TINY_CONFIGS))
def exact_pair(request):
    """A tiny student (random Hyena filters), its recurrent fit, and the student's filters made
    exactly modal (the recurrent student's); one per teacher family (the decoder layer hands the
    cache to its mixer under the family's name, and GPT-2 offsets its learned positions by it)."""
    from hyena.model.build import StudentConfig, build_student

    teacher = tiny_teacher(request.param)
    student = build_student(teacher, StudentConfig(hyena=HyenaConfig(max_len=128, emb_dim=3)))  # smooth filters
    recurrent, reports = to_recurrent(student, RecurrentConfig(fit_len=128, fit=ModalFitConfig(order=8, steps=0)),
                                      progress=False)
    for i in range(len(student.decoder_layers())):
        mixer = student.mixer(i)
        mixer.filter_fn = ExactModalFilter(recurrent.mixer(i).modal, mixer.filter_fn)
    return student.eval(), recurrent, reports


@torch.no_grad()
def test_greedy_generation_equals_full_forward_loop(exact_pair):
    student, recurrent, reports = exact_pair
    assert len(reports) == len(student.decoder_layers())
    ids = torch.randint(3, 512, (1, 17), generator=torch.Generator().manual_seed(0))
    manual = ids
    for _ in range(16):
        nxt = student(input_ids=manual, use_cache=False).logits[:, -1].argmax(-1, keepdim=True)
        manual = torch.cat([manual, nxt], dim=1)
    fed = []  # tokens each forward call of generate() receives
    hook = recurrent.register_forward_pre_hook(
        lambda _m, args, kwargs: fed.append(kwargs["input_ids"].shape[1]), with_kwargs=True)
    try:
        out = recurrent.generate(ids, max_new_tokens=16, do_sample=False, min_new_tokens=16,
                                 pad_token_id=0, attention_mask=torch.ones_like(ids))
    finally:
        hook.remove()
    assert torch.equal(out, manual)
    # the prompt once, then one token a step from the recurrent state (not the prefix again)
    assert fed == [17] + [1] * 15, fed
    # and the logits along the way agree with the full forward pass
    cache = recurrent.new_cache()
    step_logits = [recurrent(input_ids=manual[:, :17], cache=cache).logits[:, -1]]
    for t in range(17, manual.shape[1] - 1):
        step_logits.append(recurrent(input_ids=manual[:, t : t + 1], cache=cache).logits[:, -1])
    full = student(input_ids=manual[:, :-1], use_cache=False).logits[:, 16:]
    assert rel(torch.stack(step_logits, dim=1), full) < 1e-4


@torch.no_grad()
def test_fit_quality_and_save_load_round_trip(exact_pair, tmp_path):
    from transformers import AutoModelForCausalLM

    student, recurrent, reports = exact_pair
    # the random-init tiny student's filters are smooth: 8 modes fit them closely
    assert max(r["filter_rel_l2_mean"] for r in reports) < 1e-3
    ids = torch.randint(3, 512, (2, 64), generator=torch.Generator().manual_seed(1))
    errors = layer_output_errors(student, recurrent, ids)
    assert len(errors) == len(reports) and max(errors) < 1e-4  # student filters ARE modal here
    recurrent.save_pretrained(tmp_path / "rec")
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "rec")
    assert isinstance(loaded, HyenaRecurrentForCausalLM) and loaded.config.modal["order"] == 8
    assert torch.equal(loaded(input_ids=ids).logits, recurrent(input_ids=ids).logits)


def test_distill_recurrent_stage(tmp_path, monkeypatch):
    """The DVC stage on a tiny student: writes a loadable recurrent student and sane metrics;
    a bad fit_len fails with one line and leaves no output."""
    import json

    import numpy as np
    from transformers import AutoModelForCausalLM
    from typer.testing import CliRunner

    from hyena.core.io import file_sha256
    from hyena.data.tokens import content_hash
    from hyena.model.build import StudentConfig, build_student
    from pipeline.distill_recurrent import app

    torch.manual_seed(0)
    teacher = AutoModelForCausalLM.from_config(tiny_neox_config(vocab_size=256, layers=1, d=32)).eval()
    build_student(teacher, StudentConfig(hyena=HyenaConfig(max_len=128))).save_pretrained(tmp_path / "data/students/finetuned")
    (tmp_path / "data/tokens").mkdir(parents=True)
    rng = np.random.RandomState(0)
    splits = {}
    for split, rows in (("val", 4), ("train", 3)):
        np.save(tmp_path / f"data/tokens/{split}.npy", rng.randint(0, 256, (rows, 64)).astype(np.int32))
        splits[split] = {"sha256": file_sha256(tmp_path / f"data/tokens/{split}.npy"), "shape": [rows, 64]}
    manifest = {"splits": splits}  # token files are checked against their manifest
    (tmp_path / "data/tokens/manifest.json").write_text(json.dumps({**manifest, "content_hash": content_hash(manifest)}))
    monkeypatch.chdir(tmp_path)
    params = ("recurrent:\n  fit_len: {}\n  fit: {{order: 8, steps: 0}}\n  calib: {{sequences: 2}}\n  context: 64\n"
              "  max_windows: 2\n  decode_check_tokens: 8\n")
    (tmp_path / "params.yaml").write_text(params.format(4096))
    bad = CliRunner().invoke(app, [])
    assert bad.exit_code == 1 and "fit_len" in bad.output and not (tmp_path / "data/students/recurrent").exists()
    (tmp_path / "params.yaml").write_text(params.format(128).replace("sequences: 2", "sequences: 9"))
    short = CliRunner().invoke(app, [])  # 9 calibration rows asked, 3 in train.npy
    assert short.exit_code == 1 and "calib.sequences" in short.output
    assert not (tmp_path / "data/students/recurrent").exists()
    (tmp_path / "params.yaml").write_text(params.format(128))
    ok = CliRunner().invoke(app, [])
    assert ok.exit_code == 0, ok.output
    metrics = json.loads((tmp_path / "reports/metrics/recurrent.json").read_text())
    assert abs(metrics["ppl_rel_diff"]) < 0.01 and metrics["decode_check_rel_err"] < 1e-4
    assert len(metrics["layers"]) == 1 and metrics["layers"][0]["mixer_output_rel_err"] < 0.01
    layer = metrics["layers"][0]  # calibration lowers the output error on its 2 training rows
    assert layer["calib_output_rel_err"] <= layer["calib_output_rel_err_uncalibrated"] + 1e-9
    assert (tmp_path / "reports/plots/recurrent_fit.png").stat().st_size > 10_000
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "data/students/recurrent")
    assert isinstance(loaded, HyenaRecurrentForCausalLM)
    from hyena.model.cards import ModelCard  # a student made outside the pipeline still gets a card

    card = ModelCard.read(tmp_path / "data/students/recurrent")
    assert card.name == "recurrent" and card.recipe["recurrent"]["fit_len"] == 128
    assert card.metrics["decode_check_rel_err"] == pytest.approx(metrics["decode_check_rel_err"], rel=1e-5)


# ---- calibration on real activations ------------------------------------------------------------


def noisy_student(seed=0):
    """A tiny student whose filters look like noise (Hyena's Pile config: sine frequency 14, 16
    positional bands), so that few modes cannot match them tap for tap."""
    from transformers import AutoModelForCausalLM

    from hyena.model.build import StudentConfig, build_student

    torch.manual_seed(seed)
    teacher = AutoModelForCausalLM.from_config(tiny_llama_config(vocab_size=512)).eval()
    return build_student(teacher, StudentConfig(hyena=HyenaConfig(max_len=256, sine_freq=14.0, emb_dim=33))).eval()


@torch.no_grad()
def test_calibration_lowers_the_held_out_mixer_output_error():
    from hyena.recurrence import CalibrationConfig

    student = noisy_student()
    g = torch.Generator().manual_seed(0)
    calib_ids, held_out = torch.randint(3, 512, (4, 128), generator=g), torch.randint(3, 512, (2, 128), generator=g)
    cfg = RecurrentConfig(fit_len=128, fit=ModalFitConfig(order=4, steps=0), calib=CalibrationConfig(steps=20))
    plain, plain_reports = to_recurrent(student, cfg, progress=False)
    calibrated, reports = to_recurrent(student, cfg, progress=False, calib_ids=calib_ids)
    assert plain_reports[0]["filter_rel_l2_mean"] > 0.3  # the filters really are far from 4 modes
    e_plain = layer_output_errors(student, plain, held_out)
    e_cal = layer_output_errors(student, calibrated, held_out)
    for r, a, b in zip(reports, e_plain, e_cal, strict=True):
        assert b < 0.95 * a, (a, b)  # on tokens the calibration never saw (measured: 0.91x, 0.86x)
        assert r["calib_output_rel_err"] <= r["calib_output_rel_err_residues"] < r["calib_output_rel_err_uncalibrated"]
        # the filter itself is matched less well: the output is what the residues now serve
        assert r["filter_rel_l2_mean"] >= r["filter_rel_l2_mean_uncalibrated"] * 0.999
        assert bool((calibrated.mixer(r["layer"] - 1).modal.poles().abs() < 1).all())


@torch.no_grad()
def test_calibration_keeps_an_exactly_representable_fit(exact_pair):
    from hyena.recurrence.calibrate import (
        capture_mixer_io,
        long_filter_inputs,
        output_weighted_residues,
    )

    student, recurrent, _ = exact_pair
    ids = torch.randint(3, 512, (2, 96), generator=torch.Generator().manual_seed(2))
    u, _y = capture_mixer_io(student, ids)[0]
    mixer = recurrent.mixer(0)
    h = student.mixer(0).filter_fn(128)
    output_weighted_residues(mixer.modal, h, *long_filter_inputs(student.mixer(0), u))
    # the exact filter has zero loss, so the least-squares optimum stays (numerically) exact
    assert rel(mixer.modal.tail_kernel(128), h.clone().index_fill_(-1, torch.tensor([0]), 0.0)) < 1e-4
    assert rel(mixer.chunk(u), student.mixer(0)(u)[0]) < 1e-4


@pytest.mark.parametrize("family", sorted(TINY_CONFIGS))
@torch.no_grad()
def test_hybrid_recurrent_student_decodes_with_kv_and_modal_state(family):
    """A hybrid keeps the teacher's attention in some layers: its recurrent form decodes those with a
    KV cache and the rest with modal state, and prefill + steps reproduce the full pass."""
    from transformers.cache_utils import DynamicLayer

    from hyena.model.build import StudentConfig, build_student
    from hyena.recurrence import ModalLayerState

    teacher = tiny_teacher(family, layers=3)  # Mistral: a sliding window of 8, shorter than the 30 tokens
    student = build_student(teacher, StudentConfig(hyena=HyenaConfig(max_len=128, emb_dim=3), keep_attention=[2]))
    recurrent, reports = to_recurrent(student, RecurrentConfig(fit_len=128, fit=ModalFitConfig(order=8, steps=0)),
                                      progress=False)
    assert [r["layer"] for r in reports] == [1, 3]
    ids = torch.randint(3, 512, (2, 30), generator=torch.Generator().manual_seed(2))
    cache = recurrent.new_cache()
    logits = [recurrent(input_ids=ids[:, :18], cache=cache).logits]
    logits += [recurrent(input_ids=ids[:, t : t + 1], cache=cache).logits for t in range(18, 30)]
    assert [type(layer) for layer in cache.layers] == [ModalLayerState, DynamicLayer, ModalLayerState]
    assert rel(torch.cat(logits, dim=1), recurrent(input_ids=ids).logits) < 1e-5
    out = recurrent.generate(ids[:1, :10], max_new_tokens=8, min_new_tokens=8, do_sample=False, pad_token_id=0)
    manual = ids[:1, :10]
    for _ in range(8):
        manual = torch.cat([manual, recurrent(input_ids=manual).logits[:, -1:].argmax(-1)], dim=1)
    assert torch.equal(out, manual)
