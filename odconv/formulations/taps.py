"""The ``taps`` formulation: one shared GEMM producing every kernel tap's output, then shifted weighted sums.

For a kh x kw kernel, tap t = (i, j) of kernel k contributes ``z[k, t] = (x * a_c) @ W[k, :, :, i, j]^T`` at
every input pixel, and the output is ``y[p] = sum_{k,t} a_k[k] a_s[t] a_f * z[k, t][p * stride + offset(t)]``.
The GEMM has the static conv's MACs (times K) with weights shared by the whole batch, so no per-sample kernel
exists; the attentions a_s, a_k and a_f only weight the kh*kw*K shifted additions. Where the per-sample kernel
is as large as the feature maps (3x3 layers at 14x14 and below) this beats both the grouped conv over the batch
and unfolding the input (``columns``: kh*kw times the input, rescaled per sample before its GEMM).

The backward pass saves nothing but the input and the attentions: it recomputes ``z`` with one more GEMM, the
gradients of a_s, a_k and a_f come from one reduction of ``z`` against the shifted output gradient, and the
weight and input gradients are two GEMMs, as for a static conv. ``groups == 1`` only; every pixel of ``z`` is
computed, so strided layers waste stride^2 of the GEMM (the dispatch uses it for stride 1).
"""
from __future__ import annotations

from typing import Iterator, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from .common import Formulation, apply_autocast, like_input, ungrouped


def _tap_windows(size: int, out_size: int, taps: int, stride: int, padding: int, dilation: int) -> Iterator:
    """For each tap along one axis: (tap index, output slice, input slice) of the positions where the tap lands
    inside the (unpadded) input; taps that only ever land in the padding are skipped."""
    for i in range(taps):
        offset = i * dilation - padding  # input position of output 0 for this tap
        first = max(0, (-offset + stride - 1) // stride)
        last = min(out_size, (size - 1 - offset) // stride + 1)  # exclusive
        if last <= first:
            continue
        start = first * stride + offset
        yield i, slice(first, last), slice(start, start + stride * (last - first - 1) + 1, stride)


def _windows(x_hw, out_hw, kernel_size, stride, padding, dilation):
    """(tap index t, output window, input window) for every tap of the kernel that touches the input."""
    rows = list(_tap_windows(x_hw[0], out_hw[0], kernel_size[0], stride[0], padding[0], dilation[0]))
    cols = list(_tap_windows(x_hw[1], out_hw[1], kernel_size[1], stride[1], padding[1], dilation[1]))
    for i, out_r, in_r in rows:
        for j, out_c, in_c in cols:
            yield i * kernel_size[1] + j, (out_r, out_c), (in_r, in_c)


def _out_hw(x_hw, kernel_size, stride, padding, dilation) -> tuple[int, int]:
    return tuple((n + 2 * p - d * (k - 1) - 1) // s + 1
                 for n, k, s, p, d in zip(x_hw, kernel_size, stride, padding, dilation))


def _tap_factors(spatial: Optional[Tensor], kernel: Optional[Tensor], b: int, k: int, t: int, like: Tensor) -> Tensor:
    """a_k (x) a_s: (B, K*T), the weight of each tap's shifted addition."""
    s = spatial.reshape(b, 1, t) if spatial is not None else like.new_ones(b, 1, t)
    return (s * kernel[:, :, None] if kernel is not None else s.expand(b, k, t)).reshape(b, k * t)


def _nhwc(x: Tensor) -> Tensor:
    """(B, C, H, W) -> a contiguous (B, H, W, C) (a free view of a channels_last tensor)."""
    return x.contiguous(memory_format=torch.channels_last).permute(0, 2, 3, 1)


def _scaled_input(x: Tensor, channel: Optional[Tensor]) -> Tensor:
    """x * a_c in channels_last layout, the input of the shared 1x1 conv."""
    x = x.contiguous(memory_format=torch.channels_last)
    return x if channel is None else x * channel[:, :, None, None].to(x.dtype)


def _shared_weight(weight: Tensor, taps: list[int], dtype) -> Tensor:
    """(K, O, C, kh, kw) -> a 1x1 conv weight (K*len(taps)*O, C, 1, 1) of the taps that touch the input,
    outputs ordered (kernel, tap, output channel). On maps smaller than the kernel most taps only ever see
    padding (on a 1x1 map only the centre of a 3x3 kernel): they are left out of the GEMM.

    The GEMM runs as a 1x1 convolution on a channels_last input: oneDNN's 1x1 conv does 230 GMAC/s on this
    project's 2-core AMD machine where MKL's sgemm (torch.mm) does 100.
    """
    k, o, c, kh, kw = weight.shape
    w = weight.permute(0, 3, 4, 1, 2).reshape(k, kh * kw, o, c)
    if len(taps) < kh * kw:
        w = w[:, taps]
    return w.reshape(-1, c, 1, 1).to(dtype)


def _plan(x_hw, kernel_size, stride, padding, dilation):
    """(output size, windows as (column of z, output window, input window), the taps that touch the input)."""
    out_hw = _out_hw(x_hw, kernel_size, stride, padding, dilation)
    windows = list(_windows(x_hw, out_hw, kernel_size, stride, padding, dilation))
    taps = sorted({tap for tap, _, _ in windows})
    column = {tap: n for n, tap in enumerate(taps)}
    return out_hw, [(column[tap], o, i) for tap, o, i in windows], taps


class TapsODConv(torch.autograd.Function):
    """y = sum over taps of a_k a_s a_f * shifted z; saves only the input, the weight and the attentions."""

    @staticmethod
    def forward(ctx, x, weight, channel, filt, spatial, kernel, stride, padding, dilation):
        k, o, c, kh, kw = weight.shape
        b, _, h, w = x.shape
        t = kh * kw
        (ho, wo), windows, taps = _plan((h, w), (kh, kw), stride, padding, dilation)
        n = len(taps)
        xs = _scaled_input(x, channel)
        z = _nhwc(F.conv2d(xs, _shared_weight(weight, taps, x.dtype))).view(b, h, w, k, n, o)
        f = _tap_factors(spatial, kernel, b, k, t, weight).view(b, k, t)[:, :, taps]  # (B, K, n)
        f = (f[..., None] * filt[:, None, None, :] if filt is not None else f[..., None].expand(b, k, n, o))
        f = f.to(x.dtype)
        out = x.new_zeros(b, ho, wo, o)
        for j, (out_r, out_c), (in_r, in_c) in windows:
            for kk in range(k):
                out[:, out_r, out_c].addcmul_(z[:, in_r, in_c, kk, j], f[:, None, None, kk, j])
        ctx.save_for_backward(x, weight, channel, filt, spatial, kernel)
        ctx.conf = (stride, padding, dilation)
        return like_input(out.permute(0, 3, 1, 2), x)

    @staticmethod
    def backward(ctx, grad_out):
        x, weight, channel, filt, spatial, kernel = ctx.saved_tensors
        stride, padding, dilation = ctx.conf
        k, o, c, kh, kw = weight.shape
        b, _, h, w = x.shape
        t = kh * kw
        (ho, wo), windows, taps = _plan((h, w), (kh, kw), stride, padding, dilation)
        n = len(taps)
        dtype = x.dtype
        acc = torch.promote_types(dtype, torch.float32)  # reductions over pixels in at least float32
        g = grad_out.permute(0, 2, 3, 1).to(dtype)  # (B, Ho, Wo, O)
        # The output gradient shifted back onto each tap's input positions: dL/dz before the tap factors.
        gz = x.new_zeros(b, h, w, k, n, o)
        for j, (out_r, out_c), (in_r, in_c) in windows:
            for kk in range(k):
                gz[:, in_r, in_c, kk, j] = g[:, out_r, out_c]
        xs = _scaled_input(x, channel)
        w1 = _shared_weight(weight, taps, dtype)  # (K*n*O, C, 1, 1)
        z = _nhwc(F.conv2d(xs, w1)).view(b, h * w, k * n, o)
        # (B, K*n, O): sum over pixels of dL/dz * z, multiplied into z's own buffer (fresh memory is slow here).
        pn = z.mul_(gz.view(b, h * w, k * n, o)).sum(1, dtype=acc)
        del z
        # Back to all T taps (the others never touch the input: their factor's gradient is 0).
        p = pn.new_zeros(b, k, t, o)
        p[:, :, taps] = pn.view(b, k, n, o)
        p = p.view(b, k * t, o)
        f = _tap_factors(spatial, kernel, b, k, t, weight).to(acc)  # (B, K*T)
        af = filt.to(acc) if filt is not None else None
        g_filt = g_spatial = g_kernel = g_channel = g_weight = gx = None
        if af is not None and ctx.needs_input_grad[3]:
            g_filt = torch.einsum("bjo,bj->bo", p, f).to(filt.dtype)
        g_f = (p * af[:, None, :]).sum(2) if af is not None else p.sum(2)  # dL/d(a_k a_s), (B, K*T)
        g_f = g_f.view(b, k, t)
        if spatial is not None and ctx.needs_input_grad[4]:
            gs = (g_f * kernel[:, :, None].to(acc)).sum(1) if kernel is not None else g_f[:, 0]
            g_spatial = gs.view(spatial.shape).to(spatial.dtype)
        if kernel is not None and ctx.needs_input_grad[5]:
            gk = (g_f * spatial.reshape(b, 1, t).to(acc)).sum(2) if spatial is not None else g_f.sum(2)
            g_kernel = gk.to(kernel.dtype)
        fn = f.view(b, k, t)[:, :, taps]
        scale = fn[..., None] * af[:, None, None, :] if af is not None else fn[..., None].expand(b, k, n, o)
        gz = gz.mul_(scale.to(dtype)[:, None, None]).view(b, h, w, k * n * o).permute(0, 3, 1, 2)  # dL/dz
        need_xs = ctx.needs_input_grad[0] or ctx.needs_input_grad[2]
        gxs, gw1, _ = torch.ops.aten.convolution_backward(
            gz, xs, w1, None, [1, 1], [0, 0], [1, 1], False, [0, 0], 1, [need_xs, ctx.needs_input_grad[1], False])
        if ctx.needs_input_grad[1]:
            # Written tap by tap into the parameter's layout; taps that never touch the input get 0.
            g_weight = torch.zeros_like(weight) if n < t else torch.empty_like(weight)
            gw1 = gw1.view(k, n, o, c)
            for j, tap in enumerate(taps):
                g_weight[:, :, :, tap // kw, tap % kw] = gw1[:, j]
        if channel is not None and ctx.needs_input_grad[2]:
            g_channel = (gxs * x).sum((2, 3), dtype=acc).to(channel.dtype)
        if ctx.needs_input_grad[0]:
            gx = gxs * channel[:, :, None, None].to(dtype) if channel is not None else gxs
        return gx, g_weight, g_channel, g_filt, g_spatial, g_kernel, None, None, None


def odconv2d_taps(x, weight, channel, filt, spatial, kernel, stride, padding, dilation, groups) -> Tensor:
    """`taps` formulation with the memory-saving backward (groups == 1)."""
    if groups != 1:
        raise ValueError("the 'taps' formulation needs groups == 1")
    return apply_autocast(TapsODConv, x, weight, (channel, filt, spatial, kernel),
                           (tuple(stride), tuple(padding), tuple(dilation)))


FORMULATION = Formulation("taps", odconv2d_taps, ungrouped)
