"""The Hyena operator's convolution kernels: the causal long convolution by FFT, the gated chain
of long convolutions with its hand-written backward, and the causal depthwise short convolution.

The long convolution runs by FFT in O(L log L): zero-padding both signals to n >= 2L-1 (a
5-smooth size, `fft_size`) makes the circular product a linear convolution, and keeping the first
L outputs makes it causal. The pass-through is folded into the frequency response,
H_i = rfft(h_i) + b_i, because b u = (b delta) * u. It always runs in at least fp32 (torch.fft
rejects bf16 and needs power-of-two sizes for fp16).
"""

from __future__ import annotations

import functools

import torch
import torch.nn as nn


@functools.lru_cache(maxsize=256)
def fft_size(L: int) -> int:
    """Smallest 5-smooth n (= 2^a 3^b 5^c) with n >= 2L-1: no wrap-around into the first L
    outputs, and a size pocketfft/MKL transform fast. For L a power of two this is 2L; for other
    L it can be up to ~2x smaller than the next power of two (L=4097: 8640 instead of 16384)."""
    target = max(2 * L - 1, 1)
    best = 1 << (target - 1).bit_length()  # a power of two always qualifies
    p5 = 1
    while p5 < best:
        p35 = p5
        while p35 < best:
            n = p35
            while n < target:
                n *= 2
            best = min(best, n)
            p35 *= 3
        p5 *= 5
    return best


def fft_dtype(dtype: torch.dtype) -> torch.dtype:
    """The real dtype the FFT runs in: at least fp32 (bf16/fp16 -> fp32), fp64 stays fp64."""
    return torch.promote_types(dtype, torch.float32)


def causal_conv_from_spectrum(
    u: torch.Tensor, h_f: torch.Tensor, n: int, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """y = irfft(rfft(u, n) * h_f)[..., :L] (+ bias * u): causal conv given the filter spectrum.

    u: (B, d, L); h_f: (d, n//2+1) = rfft(h[..., :L], n) with n >= 2L-1 (see `fft_size`);
    bias: (d,). Returned in u's dtype.
    """
    L = u.shape[-1]
    with torch.autocast(device_type=u.device.type, enabled=False):
        u_hi = u.to(fft_dtype(u.dtype))
        u_f = torch.fft.rfft(u_hi, n=n)  # (B, d, n/2+1)
        if torch.is_grad_enabled() and (u_f.requires_grad or h_f.requires_grad):
            u_f = u_f * h_f  # autograd needs both factors
        else:
            u_f *= h_f  # inference: no second complex buffer
        y = torch.fft.irfft(u_f, n=n)[..., :L]  # (B, d, L)
        if bias is not None:
            y = torch.addcmul(y, u_hi, bias.to(u_hi.dtype)[:, None])
    return y.to(u.dtype)


def fft_causal_conv(u: torch.Tensor, h: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """Causal convolution y[t] = sum_{s<=t} h[s] u[t-s] (+ bias * u[t]) per channel, by FFT.

    u: (B, d, L), h: (d, L') with L' >= L (extra taps are ignored), bias: (d,). Zero-padding to
    n >= 2L-1 makes the circular FFT product a linear convolution; keeping the first L outputs
    makes it causal. Computed in at least fp32 (fp64 stays fp64); returned in the input dtype.
    """
    L = u.shape[-1]
    n = fft_size(L)
    with torch.autocast(device_type=u.device.type, enabled=False):
        h_f = torch.fft.rfft(h[..., :L].to(fft_dtype(u.dtype)), n=n)  # (d, n/2+1)
    return causal_conv_from_spectrum(u, h_f, n, bias)


def _take(h: torch.Tensor, L: int) -> torch.Tensor:
    return h if h.shape[-1] == L else h[..., :L]


class _GatedLongConv(torch.autograd.Function):
    """The chain between the short conv and the output projection, with a written-out backward:

        v_0 = v;  v_{o+1} = h_o * (g_o v_o) + b_o (g_o v_o)  (g_o = x_{N-1-o});   y = x_0 v_{N-1}

    Autograd through the same ops pads, copies, zero-fills and pins the whole (B, d, n) inverse
    FFT of every conv output; this keeps the real conv outputs v_1..v_{N-1} and, when the filter
    needs a gradient, the input spectra W_o. Per filter, one FFT pair forward and two FFTs
    backward (plus one of size d):

        inputs:  dw = irfft(rfft(dv) conj(H))[:L]               (correlation with h)
        filter:  dh = irfft(sum_b rfft(dv) conj(W))[:L],  db = dh[0]  (b is a delta filter)

    Zero-padding to n >= 2L-1 keeps both correlations free of wrap-around, as in the forward.
    """

    @staticmethod
    def forward(ctx, h, bias, v, *x):  # h (F, d, L), bias (F, d), v and each x_i (B, d, L)
        L = v.shape[-1]
        n = fft_size(L)
        need_h = ctx.needs_input_grad[0] or ctx.needs_input_grad[1]
        with torch.autocast(device_type=v.device.type, enabled=False):
            H = _spectrum(h, bias, n, fft_dtype(v.dtype))  # (F, d, n/2+1)
            outs, spectra = _chain(v, x, H, n, keep=True, keep_spectra=need_h)
        ctx.n, ctx.h_dtype, ctx.bias_dtype, ctx.need_h = n, h.dtype, bias.dtype, need_h
        ctx.save_for_backward(H, v, *outs[:-1], *spectra, *x)
        return outs[-1]

    @staticmethod
    def backward(ctx, grad):  # grad (B, d, L)
        H, v, *rest = ctx.saved_tensors
        n, F_, need_h = ctx.n, H.shape[0], ctx.need_h
        conv_outs, rest = rest[:F_], rest[F_:]  # v_1 .. v_{N-1}
        spectra, x = (rest[:F_], rest[F_:]) if need_h else ((), rest)  # W_o; x_0 .. x_{N-1}
        L, fdt = v.shape[-1], fft_dtype(v.dtype)
        grad_x: list[torch.Tensor | None] = [None] * len(x)
        grad_h = torch.empty(H.shape[:-1] + (L,), dtype=fdt, device=v.device) if need_h else None
        with torch.autocast(device_type=v.device.type, enabled=False):
            grad_x[0] = grad * conv_outs[-1]
            dv = grad * x[0]
            for o in reversed(range(F_)):
                gate = x[len(x) - 1 - o]
                v_o = v if o == 0 else conv_outs[o - 1]
                DV = torch.fft.rfft(dv.to(fdt), n=n)  # (B, d, n/2+1)
                if need_h:  # einsum sums over the batch without materialising conj(W)
                    cross = torch.einsum("bdf,bdf->df", DV, spectra[o].conj())
                    grad_h[o] = torch.fft.irfft(cross, n=n)[..., :L]  # (d, L)
                dw = torch.fft.irfft(DV.mul_(H[o].conj()), n=n)[..., :L].to(v.dtype)  # (B, d, L)
                grad_x[len(x) - 1 - o] = dw * v_o
                dv = dw * gate
        if not need_h:
            return None, None, dv, *grad_x
        grad_bias = grad_h[..., 0].to(ctx.bias_dtype)
        return grad_h.to(ctx.h_dtype), grad_bias, dv, *grad_x


def _spectrum(h: torch.Tensor, bias: torch.Tensor, n: int, dtype: torch.dtype) -> torch.Tensor:
    """rfft(h, n) + b: (F, d, n/2+1), the pass-through folded in as a delta filter."""
    return torch.fft.rfft(h.to(dtype), n=n) + bias.to(dtype)[..., None]


def _chain(v: torch.Tensor, x: tuple[torch.Tensor, ...], H: torch.Tensor, n: int, keep: bool = False,
           keep_spectra: bool = False, inputs: list | None = None) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """([v_1, ..., v_{N-1}, y], [W_0, ...]) of the gated chain given the spectra H (F, d, n/2+1):
    conv outputs and y (B, d, L) and, with keep_spectra, each conv's input spectrum
    (B, d, n/2+1). Products run in v's dtype, FFTs in H's (at least fp32). keep: make the conv
    outputs contiguous (kept for the backward, a view would pin the whole (B, d, n) irfft).
    inputs: a list that receives each conv's input w_o = v_o g_o (B, d, L).

    Without keep (inference) each w_o is written straight into its zero-padded FFT input and y
    into the last inverse FFT's buffer (y is then a (B, d, L) view with row stride n): at long L
    every fresh buffer costs page faults, and this saves three of them per filter."""
    L, dtype, fdt = v.shape[-1], v.dtype, H.real.dtype
    outs, spectra = [], []
    for o in range(H.shape[0]):
        gate = x[len(x) - 1 - o]
        if keep:
            w = v * gate  # (B, d, L)
            W = torch.fft.rfft(w.to(fdt), n=n)  # (B, d, n/2+1)
        else:
            padded = v.new_empty(*v.shape[:-1], n, dtype=fdt)
            padded[..., L:].zero_()
            w = torch.mul(v, gate, out=padded[..., :L]) if dtype == fdt else (v * gate)
            if dtype != fdt:
                padded[..., :L].copy_(w)
            W = torch.fft.rfft(padded)
            del padded
        if inputs is not None:
            inputs.append(w)
        del w
        if keep_spectra:
            spectra.append(W)
            W = W * H[o]
        else:
            W.mul_(H[o])
        v = torch.fft.irfft(W, n=n)[..., :L]  # (B, d, L), a view of (B, d, n)
        del W
        outs.append(v.to(dtype).contiguous() if keep else v)
    if keep or v.dtype != dtype:
        outs.append(v.to(dtype) * x[0])
    else:
        outs.append(v.mul_(x[0]))  # in the inverse FFT's own buffer
    return outs, spectra


def gated_long_conv(x: list[torch.Tensor], v: torch.Tensor, h: torch.Tensor, bias: torch.Tensor,
                    H: torch.Tensor | None = None) -> torch.Tensor:
    """x_0 * (h_{N-1} * (x_1 * ... (h_1 * (x_{N-1} * v)))) with each long conv causal, by FFT, and
    its pass-through bias: the operator between its short conv and output projection.

    x: N gates and v, each (B, d, L); h: (N-1, d, L' >= L) filters; bias (N-1, d). H: their
    spectra `rfft(h[..., :L], fft_size(L)) + bias` when already known (inference caches them;
    used only when no gradient is needed). Returns (B, d, L) in v's dtype; FFTs in >= fp32.
    """
    L = v.shape[-1]
    if torch.is_grad_enabled() and any(t.requires_grad for t in (v, h, bias, *x)):
        return _GatedLongConv.apply(_take(h, L), bias, v, *x)
    n = fft_size(L)
    with torch.autocast(device_type=v.device.type, enabled=False):
        if H is None:
            H = _spectrum(_take(h, L), bias, n, fft_dtype(v.dtype))
        return _chain(v, tuple(x), H, n)[0][-1]


@torch.no_grad()
def gated_long_conv_inputs(x: list[torch.Tensor], v: torch.Tensor, H: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
    """`gated_long_conv` at inference that also returns what each long filter convolved:
    ([w_0, ..., w_{N-2}] each (B, d, L), y (B, d, L)); H as there (here required)."""
    inputs: list[torch.Tensor] = []
    with torch.autocast(device_type=v.device.type, enabled=False):
        outs, _ = _chain(v, tuple(x), H, fft_size(v.shape[-1]), inputs=inputs)
    return inputs, outs[-1]


# ----------------------------------------------------------------------------------------------
# Short causal depthwise convolution
# ----------------------------------------------------------------------------------------------


class _CausalDepthwiseConv(torch.autograd.Function):
    """s[:, c, t] = b[c] + sum_k w[c, k] z[:, c, t-(K-1)+k] as K shifted multiply-adds.

    On CPU this is several times faster than nn.Conv1d's depthwise kernel, needs no padded copy
    and writes a contiguous (B, C, L) result. The backward is written out (in-place slice updates
    under autograd would be slow): dz[t] = sum_k w[k] ds[t+(K-1)-k], dw[k] = sum_{b,t} ds[t]
    z[t-(K-1)+k], db = sum_{b,t} ds[t].
    """

    @staticmethod
    def forward(ctx, z, weight, bias):  # z (B, C, L), weight (C, K), bias (C,) or None
        K, L = weight.shape[1], z.shape[-1]
        if bias is None:
            out = z * weight[:, K - 1, None]
        else:
            out = torch.addcmul(bias[:, None], z, weight[:, K - 1, None])  # (B, C, L)
        for j in range(1, min(K, L)):  # tap K-1-j reads z shifted right by j
            out[..., j:].addcmul_(z[..., : L - j], weight[:, K - 1 - j, None])
        ctx.save_for_backward(z, weight)
        ctx.has_bias = bias is not None
        return out

    @staticmethod
    def backward(ctx, grad):  # grad (B, C, L)
        z, weight = ctx.saved_tensors
        K, L = weight.shape[1], z.shape[-1]
        grad_z = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_z = grad * weight[:, K - 1, None]
            for j in range(1, min(K, L)):
                grad_z[..., : L - j].addcmul_(grad[..., j:], weight[:, K - 1 - j, None])
        if ctx.needs_input_grad[1]:  # per-row dot products: half the time of mul-then-sum
            grad_w = torch.zeros_like(weight)
            for j in range(0, min(K, L)):
                dots = torch.matmul(grad[..., j:, None].mT, z[..., : L - j, None])  # (B, C, 1, 1)
                grad_w[:, K - 1 - j] = dots.sum(0).view(-1)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = grad.sum(dim=(0, 2))
        return grad_z, grad_w, grad_b


def causal_depthwise_conv(z: torch.Tensor, conv: nn.Conv1d) -> torch.Tensor:
    """The causal output of a depthwise `conv` (kernel K, weight (C, 1, K)) on z: (B, C, L) ->
    (B, C, L); equal to `conv(z)[..., :L]` when conv pads K-1 on both sides."""
    weight = conv.weight[:, 0]  # (C, K)
    if z.dtype != weight.dtype:  # autocast: follow the activations, as Conv1d would
        weight = weight.to(z.dtype)
    bias = None if conv.bias is None else conv.bias.to(z.dtype)
    return _CausalDepthwiseConv.apply(z.contiguous(), weight, bias)


def project_channel_major(linear: nn.Linear, u: torch.Tensor) -> torch.Tensor:
    """linear(u) written channel-major: (B, L, d_in) -> (B, d_out, L), by one batched matmul that
    reads u and writes the result through BLAS transposes instead of copies."""
    w, b = linear.weight, linear.bias
    if torch.is_autocast_enabled(u.device.type):  # let F.linear pick the autocast dtype
        return linear(u).mT.contiguous()
    w_b = w.expand(u.shape[0], *w.shape)  # (B, d_out, d_in), no copy
    if b is None:
        return torch.bmm(w_b, u.mT)
    return torch.baddbmm(b[:, None], w_b, u.mT)  # (B, d_out, L)


# ----------------------------------------------------------------------------------------------
# Implicit long filter
# ----------------------------------------------------------------------------------------------
