"""The Hyena operator: causality, FFT == direct convolution, precision, filters, caching."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import hyena.model.fftconv as op_mod
from hyena.model.fftconv import causal_depthwise_conv, fft_causal_conv, fft_size
from hyena.model.operator import HyenaConfig, HyenaOperator, causality_violation
from hyena.train.optim import param_groups

D = 16  # small width: every test here is about structure and numerics, not capacity


def make_op(order: int = 2, max_len: int = 256, seed: int = 0, d: int = D, **cfg) -> HyenaOperator:
    torch.manual_seed(seed)
    return HyenaOperator(d, HyenaConfig(order=order, max_len=max_len, **cfg))


def output_jacobian(mixer: nn.Module, u: torch.Tensor) -> torch.Tensor:
    """J[t, b, s, :] = d sum_c y[b, t, c] / d u[b, s, :]: (L, B, L, d). The batch rows do not
    interact, so summing over b in the backward still separates them."""
    u = u.detach().requires_grad_(True)
    y = mixer(u)  # (B, L, d)
    rows = [torch.autograd.grad(y[:, t].sum(), u, retain_graph=True)[0] for t in range(u.shape[1])]
    return torch.stack(rows)


def future_leak(jac: torch.Tensor) -> float:
    """Largest |d y[t] / d u[s]| over s > t, relative to the largest gradient overall."""
    L = jac.shape[0]
    future = torch.triu(torch.ones(L, L, dtype=torch.bool), diagonal=1)  # [t, s]: s > t
    leak = jac.abs().amax(dim=(1, 3))[future].max().item() if L > 1 else 0.0  # (L, L) -> max
    return leak / jac.abs().max().item()


# ---------------------------------------------------------------------------------------------
# causality
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("order", [2, 3])
@pytest.mark.parametrize("L", [17, 32])
def test_causal_in_float64(order, L):
    mixer = make_op(order=order).double()
    u = torch.randn(3, L, D, dtype=torch.float64)
    jac = output_jacobian(mixer, u)
    assert jac.abs().max() > 0
    assert future_leak(jac) < 1e-12
    # every output does depend on its own and earlier positions (the check is not vacuous)
    assert (jac[L - 1, :, 0].abs().amax(dim=-1) > 0).all()


def test_builtin_causality_check_agrees():
    mixer = make_op().double()
    assert causality_violation(mixer, D, L=12, batch=2) < 1e-12


class LookAheadShortConv(HyenaOperator):
    """Broken on purpose: keeps the LAST L outputs of the padded short conv (sees k-1 ahead)."""
    def gates(self, u):
        z = self.in_proj(u).transpose(1, 2)  # (B, C, L)
        z = self.short_filter(z)[..., -u.shape[1]:]
        *x, v = z.split(self.d_model, dim=1)
        return x, v


def test_check_catches_a_look_ahead_short_conv():
    torch.manual_seed(0)
    mixer = LookAheadShortConv(D, HyenaConfig(max_len=64)).double()
    jac = output_jacobian(mixer, torch.randn(2, 16, D, dtype=torch.float64))
    assert future_leak(jac) > 1e-3


def test_check_catches_a_circular_fft(monkeypatch):
    monkeypatch.setattr(op_mod, "fft_size", lambda L: L)  # n = L: circular, wraps the future in
    mixer = make_op(max_len=64).double()
    jac = output_jacobian(mixer, torch.randn(2, 16, D, dtype=torch.float64))
    assert future_leak(jac) > 1e-3


# ---------------------------------------------------------------------------------------------
# FFT convolution
# ---------------------------------------------------------------------------------------------


def direct_causal_conv(u: torch.Tensor, h: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """y[t] = sum_{s<=t} h[s] u[t-s] + bias u[t], as an explicit sum over taps."""
    L = u.shape[-1]
    y = u * bias[:, None]
    for s in range(L):
        y[..., s:] += h[:, s, None] * u[..., : L - s]
    return y


@pytest.mark.parametrize("L", [1, 7, 64, 100, 257])
def test_fft_conv_equals_direct_conv(L):
    g = torch.Generator().manual_seed(L)
    u = torch.randn(2, 5, L, generator=g, dtype=torch.float64)
    h = torch.randn(5, L + 9, generator=g, dtype=torch.float64)  # extra taps must be ignored
    bias = torch.randn(5, generator=g, dtype=torch.float64)
    want = direct_causal_conv(u, h, bias)
    got = fft_causal_conv(u, h, bias)
    assert got.dtype == torch.float64
    assert torch.allclose(got, want, rtol=0, atol=1e-11 * want.abs().max().item())


def test_fft_size_is_linear_and_smooth():
    for L in range(1, 3000):
        n = fft_size(L)
        assert n >= 2 * L - 1  # no circular wrap into the first L outputs
        assert n <= 1 << (2 * L - 1).bit_length()  # never worse than the next power of two
        m = n
        for p in (2, 3, 5):
            while m % p == 0:
                m //= p
        assert m == 1, f"fft_size({L}) = {n} is not 5-smooth"


def test_short_conv_matches_conv1d_and_gradcheck():
    g = torch.Generator().manual_seed(1)
    for K, L in [(1, 5), (3, 2), (3, 9), (5, 7)]:
        conv = nn.Conv1d(4, 4, K, padding=K - 1, groups=4).double()
        z = torch.randn(2, 4, L, generator=g, dtype=torch.float64, requires_grad=True)
        want = conv(z)[..., :L]
        assert torch.allclose(causal_depthwise_conv(z, conv), want, atol=1e-14)
        assert torch.autograd.gradcheck(
            lambda z, w, b: op_mod._CausalDepthwiseConv.apply(z, w, b),
            (z, conv.weight[:, 0].detach().clone().requires_grad_(), conv.bias.detach().clone().requires_grad_()),
        )


@pytest.mark.parametrize("order", [2, 3])
def test_gated_long_conv_backward_is_exact(order):
    """The written-out backward of the gated FFT chain: gradcheck on every input (filters,
    pass-through, v and each gate), and the same gradients as autograd through fft_causal_conv."""
    g = torch.Generator().manual_seed(order)
    B, d, L = 2, 3, 7
    F_ = order - 1
    h = torch.randn(F_, d, L, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(F_, d, generator=g, dtype=torch.float64, requires_grad=True)
    v = torch.randn(B, d, L, generator=g, dtype=torch.float64, requires_grad=True)
    x = [torch.randn(B, d, L, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(order)]
    assert torch.autograd.gradcheck(lambda h, b, v, *x: op_mod._GatedLongConv.apply(h, b, v, *x), (h, b, v, *x))

    def reference(h, b, v, *x):
        for o in range(F_):
            v = fft_causal_conv(v * x[order - 1 - o], h[o], b[o])
        return v * x[0]

    weights = torch.randn(B, d, L, generator=g, dtype=torch.float64)
    inputs = (h, b, v, *x)
    fast = torch.autograd.grad((op_mod.gated_long_conv(list(x), v, h, b) * weights).sum(), inputs)
    slow = torch.autograd.grad((reference(*inputs) * weights).sum(), inputs)
    for a, c in zip(fast, slow, strict=True):
        assert torch.allclose(a, c, rtol=1e-10, atol=1e-12)


def test_operator_gradcheck():
    mixer = make_op(order=3, d=3, max_len=16).double()
    u = torch.randn(2, 5, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(mixer, (u,))


# ---------------------------------------------------------------------------------------------
# precision, shapes, determinism
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype,tol", [(torch.float16, 5e-3), (torch.bfloat16, 3e-2)])
def test_half_precision_inputs_are_finite_and_close(dtype, tol):
    mixer = make_op(d=32)
    u = torch.randn(2, 100, 32)
    want = mixer(u)
    half = copy.deepcopy(mixer).to(dtype)
    got = half(u.to(dtype))
    assert got.dtype == dtype and torch.isfinite(got).all()
    assert ((got.float() - want).norm() / want.norm()).item() < tol
    with torch.autocast("cpu", dtype=torch.bfloat16):  # mixed precision keeps fp32 weights
        mixed = mixer(u)
    assert torch.isfinite(mixed).all()
    assert ((mixed.float() - want).norm() / want.norm()).item() < 3e-2


def test_drop_in_shape_and_deterministic():
    u = torch.randn(3, 50, D)
    a, b = make_op(seed=7), make_op(seed=7)
    y = a(u)
    assert y.shape == u.shape
    assert torch.equal(y, b(u))  # same seed, same weights, same output
    with torch.no_grad():  # the cached inference path computes the same thing
        assert torch.allclose(a(u), y, atol=1e-6)
        assert torch.equal(a(u), a(u))
    assert not torch.equal(y, make_op(seed=8)(u))


# ---------------------------------------------------------------------------------------------
# implicit filter
# ---------------------------------------------------------------------------------------------


def test_filters_for_any_length_up_to_max_len():
    mixer = make_op(order=3, max_len=300)
    full = mixer.filter_fn(300)
    assert full.shape == (2, D, 300)
    for L in (1, 5, 257):
        h = mixer.filter_fn(L)
        assert h.shape == (2, D, L)
        assert torch.allclose(h, full[..., :L], atol=1e-6)  # tap n does not depend on L
    # the exponential window makes late taps small compared with early ones
    assert full[..., 250:].abs().mean() < full[..., :50].abs().mean()
    with pytest.raises(ValueError, match="max_len 300"):
        mixer.filter_fn(301)
    with pytest.raises(ValueError, match="max_len"):
        mixer(torch.randn(1, 301, D))


def test_param_groups_isolate_filter_params():
    mixer = make_op(order=3)
    mixer.out_proj.bias.requires_grad_(False)  # frozen parameters are left out
    groups = {g["name"]: g for g in param_groups(mixer, lr=1e-3, weight_decay=0.1, filter_lr=5e-4)}
    filt = {id(p) for p in mixer.filter_fn.parameters()}
    assert {id(p) for p in groups["filter"]["params"]} == filt
    assert groups["filter"]["weight_decay"] == 0.0 and groups["filter"]["lr"] == 5e-4
    assert not filt & {id(p) for p in groups["decay"]["params"] + groups["no_decay"]["params"]}
    assert all(p.ndim >= 2 for p in groups["decay"]["params"])
    assert groups["decay"]["weight_decay"] == 0.1
    listed = [id(p) for g in groups.values() for p in g["params"]]
    trainable = [id(p) for p in mixer.parameters() if p.requires_grad]
    assert sorted(listed) == sorted(trainable)  # each trainable parameter exactly once


def test_param_groups_readout_lr_moves_only_the_output_projection():
    model = nn.Sequential(make_op(order=2), nn.Linear(D, D))  # a mixer next to an unrelated layer
    mixer = model[0]
    assert "readout" not in {g["name"] for g in param_groups(model, lr=1e-3, weight_decay=0.1)}
    groups = {g["name"]: g for g in param_groups(model, lr=1e-3, weight_decay=0.1, readout_lr=1e-6)}
    assert {id(p) for p in groups["readout"]["params"]} == {id(p) for p in mixer.out_proj.parameters()}
    assert groups["readout"]["lr"] == 1e-6 and groups["readout"]["weight_decay"] == 0.0
    listed = [id(p) for g in groups.values() for p in g["params"]]
    assert sorted(listed) == sorted(id(p) for p in model.parameters())  # each parameter exactly once
    # one AdamW step: the readout moves ~1e-6 per entry, the in-projection and the other layer ~1e-3
    opt = torch.optim.AdamW(list(groups.values()))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    model(torch.randn(2, 16, D)).square().mean().backward()
    opt.step()
    moved = {n: (p - before[n]).abs().max().item() for n, p in model.named_parameters()}
    assert moved["0.out_proj.weight"] < 2e-6 < 5e-4 < moved["0.in_proj.weight"]
    assert moved["1.weight"] > 5e-4


# ---------------------------------------------------------------------------------------------
# inference cache
# ---------------------------------------------------------------------------------------------


def reference_output(mixer: nn.Module, u: torch.Tensor) -> torch.Tensor:
    """The output computed with gradients on, i.e. with freshly generated filters."""
    with torch.enable_grad():
        return mixer(u).detach()


def test_cache_is_reused_at_inference(monkeypatch):
    mixer = make_op()
    calls = []
    generate = mixer.filter_fn._generate
    monkeypatch.setattr(mixer.filter_fn, "_generate", lambda L: calls.append(L) or generate(L))
    u = torch.randn(1, 40, D)
    with torch.no_grad():
        y1, y2 = mixer(u), mixer(u[:, :30])
    assert calls == [40]  # the shorter call reused a prefix of the cached filter
    assert torch.allclose(y2, reference_output(mixer, u[:, :30]), atol=1e-6)
    assert torch.allclose(y1, reference_output(mixer, u), atol=1e-6)
    for p in mixer.parameters():  # frozen weights are cacheable even with grad enabled
        p.requires_grad_(False)
    calls.clear()
    mixer(u), mixer(u)
    assert calls == [40]


@pytest.mark.parametrize("how", ["load_state_dict", "assign", "data_write", "optimizer_step"])
def test_cache_invalidated_when_weights_change(how):
    mixer, other = make_op(seed=0), make_op(seed=1)
    u = torch.randn(2, 40, D)
    with torch.no_grad():
        before = mixer(u)  # fills the cache
    if how == "load_state_dict":
        mixer.load_state_dict(other.state_dict())
    elif how == "assign":  # new parameter tensors, fresh version counters
        mixer.load_state_dict(copy.deepcopy(other.state_dict()), assign=True)
    elif how == "data_write":  # .data writes bypass autograd's version counters
        mixer.filter_fn.ffn[-1].weight.data.mul_(-2.0)
    else:
        opt = torch.optim.SGD(mixer.filter_fn.parameters(), lr=0.5)
        mixer(u).square().mean().backward()
        opt.step()
    with torch.no_grad():
        after = mixer(u)
    want = reference_output(mixer, u)
    assert not torch.allclose(after, before, atol=1e-4)
    assert torch.allclose(after, want, atol=1e-6)
    if how != "data_write":
        other_out = reference_output(other, u)
        assert torch.allclose(after, other_out, atol=1e-6) == (how != "optimizer_step")


def test_cache_follows_dtype_changes():
    mixer = make_op()
    u = torch.randn(1, 20, D)
    with torch.no_grad():
        mixer(u)
        mixer.double()
        y = mixer(u.double())
    assert y.dtype == torch.float64
    assert torch.allclose(y, reference_output(mixer, u.double()), atol=1e-12)


def test_training_outputs_get_filter_gradients():
    mixer = make_op()
    with torch.no_grad():
        mixer(torch.randn(1, 20, D))  # a cached filter must not leak into training
    mixer(torch.randn(2, 20, D)).sum().backward()
    for name, p in mixer.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_gates_match_linear_then_torch_conv1d():
    mixer = make_op()
    u = torch.randn(2, 9, D)
    z = mixer.in_proj(u).transpose(1, 2)  # (B, C, L)
    assert torch.allclose(mixer.project_in(u), z, atol=1e-6)
    want = F.conv1d(z, mixer.short_filter.weight, mixer.short_filter.bias,
                    padding=mixer.cfg.short_filter_len - 1, groups=z.shape[1])[..., :9]
    x, v = mixer.gates(u)
    assert torch.allclose(torch.cat(x + [v], dim=1), want, atol=1e-6)
