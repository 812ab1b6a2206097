"""``grouped``: the released formulation. a_c on the input, a_s and a_k folded into a per-sample kernel, one
convolution with ``groups = B * groups`` over the batch seen as one image, a_f on the output. Autograd keeps the
per-sample kernel and the scaled input alive for the backward pass. Computes every layer, 3-D ones included.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from .common import Formulation, any_layer, conv_nd, trailing
from .taps import _tap_windows


def aggregate_kernels(weight: Tensor, spatial: Optional[Tensor], kernel: Optional[Tensor]) -> Tensor:
    """Per-sample kernel sum_i kernel[b, i] * spatial[b] * W_i: (B, O, I/g, *kernel_size), as released."""
    if kernel is None:
        w = weight[0].unsqueeze(0)  # (1, O, I/g, *kernel_size)
        return w if spatial is None else w * spatial[:, None, None]
    if spatial is None:
        return torch.einsum("bk,koi...->boi...", kernel, weight)
    return _MixedSpatialKernels.apply(kernel, spatial, weight)


class _MixedSpatialKernels(torch.autograd.Function):
    """sum_i a_k[b, i] * a_s[b] * W_i for K > 1 and a spatial attention, keeping only the attentions and W for the
    backward pass. Under plain autograd the mixed kernel before the a_s scaling is kept for the a_s gradient (a
    second per-sample kernel: twice the released code's memory); one einsum over a_k (x) a_s instead is a
    batched GEMM over the taps whose result needs a copy into the conv's layout (a slow, fresh 38 MB per
    ResNet50 layer3 conv)."""

    @staticmethod
    def forward(ctx, kernel, spatial, weight):
        b, k, t = kernel.shape[0], weight.shape[0], spatial[0].numel()
        w = (kernel @ weight.reshape(k, -1)).view(b, -1, t)
        w.mul_(spatial.reshape(b, 1, t).to(w.dtype))  # in place: w is this function's own buffer
        ctx.save_for_backward(kernel, spatial, weight)
        return w.view(b, *weight.shape[1:])

    @staticmethod
    def backward(ctx, grad):
        kernel, spatial, weight = ctx.saved_tensors
        b, k, t = kernel.shape[0], weight.shape[0], spatial[0].numel()
        dtype = grad.dtype
        g = grad.reshape(b, -1, t)
        a_k, a_s = kernel.to(dtype), spatial.reshape(b, t).to(dtype)
        m = torch.einsum("bnt,knt->bkt", g, weight.reshape(k, -1, t).to(dtype))  # sum_n dL/dW[b] * W_i
        g_kernel = (m * a_s[:, None]).sum(2).to(kernel.dtype) if ctx.needs_input_grad[0] else None
        g_spatial = None
        if ctx.needs_input_grad[1]:
            g_spatial = (m * a_k[:, :, None]).sum(1).view(spatial.shape).to(spatial.dtype)
        g_weight = None
        if ctx.needs_input_grad[2]:
            g_weight = torch.einsum("bj,bnt->jnt", a_k, g * a_s[:, None]).reshape(weight.shape).to(weight.dtype)
        return g_kernel, g_spatial, g_weight


def data_tap_box(spatial, kernel_size, stride, padding, dilation) -> Optional[tuple[tuple[slice, ...], tuple[int, ...]]]:
    """Where a kernel's taps that ever land on the input lie: (a slice of taps per spatial dim, the padding that
    the cropped kernel needs), or None where every tap does (or cropping would need asymmetric padding).

    On maps smaller than the kernel, taps that only ever see the zero padding contribute nothing: at 32px input
    ResNet18's last stage runs its 3x3 convs on 1x1 maps, where only the centre tap sees data. A conv with the
    kernel cut to the box and the padding reduced by the taps cut gives the same output, with the same shape.
    """
    if isinstance(padding, str):  # 'same' / 'valid' (nn.Conv2d's string padding): no cut
        return None
    box, pads = [], []
    for n, k, s, p, d in zip(spatial, kernel_size, stride, padding, dilation):
        out = (n + 2 * p - d * (k - 1) - 1) // s + 1
        touching = [i for i, _, _ in _tap_windows(n, out, k, s, p, d)]  # the taps formulation's own rule
        if not touching:  # no output (the conv itself will say why)
            return None
        lo, hi = touching[0], touching[-1] + 1
        left, right = p - lo * d, p - (k - hi) * d
        if left != right or left < 0:
            return None
        box.append(slice(lo, hi))
        pads.append(left)
    if all(b.stop - b.start == k for b, k in zip(box, kernel_size)):
        return None
    return tuple(box), tuple(pads)


def conv_per_sample(x: Tensor, kernels: Tensor, stride, padding, dilation, groups: int) -> Tensor:
    """y[b] = conv(x[b], kernels[b]) for 1-, 2- or 3-D inputs: the batch seen as one sample of B * C channels and
    one conv with ``groups = B * groups``. `kernels` is (B, O, I/g, k...); used by layers that build their own
    per-sample kernel (KernelWarehouse)."""
    b, o = kernels.shape[:2]
    out = conv_nd(x.reshape(1, -1, *x.shape[2:]), kernels.reshape(b * o, *kernels.shape[2:]), None, stride, padding,
               dilation, groups * b)
    return out.view(b, o, *out.shape[2:])


def odconv2d_grouped(x, weight, channel, filt, spatial, kernel, stride, padding, dilation, groups) -> Tensor:
    """The released formulation: one per-sample kernel per sample, run as one grouped conv over the batch."""
    b, c = x.shape[:2]
    dims = x.dim() - 2
    if channel is not None:
        x = x * trailing(channel, dims)
    if spatial is None and kernel is None:
        # 1x1, single kernel: the released code runs the static conv here (`_forward_impl_pw1x`).
        out = conv_nd(x, weight[0], None, stride, padding, dilation, groups)
    else:
        agg = aggregate_kernels(weight, spatial, kernel).reshape(-1, *weight.shape[2:])  # (B*O, I/g, *kernel)
        out = conv_nd(x.reshape(1, b * c, *x.shape[2:]), agg, None, stride, padding, dilation, groups * b)
        out = out.view(b, -1, *out.shape[2:])
    if filt is not None:
        out = out * trailing(filt, dims)
    return out


FORMULATION = Formulation("grouped", odconv2d_grouped, any_layer)
