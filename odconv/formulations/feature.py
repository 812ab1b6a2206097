"""The ``feature`` formulation for layers without spatial attention (1x1 kernels): attentions on the feature maps.

``y = a_f * sum_i a_k[i] * conv(x * a_c, W_i)``: the K kernels are stacked into one static convolution (K times
the MACs, weights shared by the batch), and no per-sample kernel exists.

Against the same computation under autograd (the released code's path for 1x1, K = 1), the backward pass keeps
one tensor fewer alive: ``x * a_c`` (input-sized) is recomputed from the saved input, one elementwise pass. The
pre-attention output is saved (recomputing it would cost a second convolution).

Tried and dropped: running the convolution on a channels_last copy written by the a_c pass (oneDNN's 1x1 conv
is up to 3x faster on channels_last on this project's CPU) and recomputing the pre-attention output too. It
kept memory at the static conv's level but measured 1.5-1.7x slower than this version on the zoo's 1x1 layers
from 28x28 down (layer rows of scripts/bench_odconv.py; that variant was not kept).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from .common import Formulation, apply_autocast, as_param_grad, output_mix, scale_input


def _stacked(weight: Tensor, dtype) -> Tensor:
    """(K, O, I/g, 1, 1) -> (O*K, I/g, 1, 1), ordered (O, K) so each group of a grouped conv sees its own
    output channels of all K kernels."""
    k, o = weight.shape[:2]
    return weight.transpose(0, 1).reshape(o * k, *weight.shape[2:]).to(dtype)


def _output_factors(filt: Optional[Tensor], kernel: Optional[Tensor], b: int, o: int, k: int, like: Tensor) -> Tensor:
    """a_f (x) a_k as (B, O, K), the factor on each of the K convolution outputs (ones where both are absent)."""
    mix = output_mix(filt, kernel, b, k, o, like.dtype)
    return (like.new_ones(b, k, o) if mix is None else mix).transpose(1, 2)


class FeatureODConv(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, channel, filt, spatial, kernel, stride, padding, dilation, groups):
        k, o = weight.shape[:2]
        b = x.shape[0]
        z = F.conv2d(scale_input(x, channel), _stacked(weight, x.dtype), None, stride, padding,
                     dilation, groups)
        mix = _output_factors(filt, kernel, b, o, k, weight).to(x.dtype)
        ho, wo = z.shape[-2:]
        if k == 1:
            out = z * mix.view(b, o, 1, 1)
        else:
            out = torch.einsum("bokhw,bok->bohw", z.view(b, o, k, ho, wo), mix)
        ctx.save_for_backward(x, weight, channel, filt, kernel, z)
        ctx.conf = (stride, padding, dilation, groups)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        x, weight, channel, filt, kernel, z = ctx.saved_tensors
        stride, padding, dilation, groups = ctx.conf
        k, o = weight.shape[:2]
        b = x.shape[0]
        dtype = x.dtype
        acc = torch.promote_types(dtype, torch.float32)  # reductions over pixels in at least float32
        g = grad_out.to(dtype)
        ho, wo = g.shape[-2:]
        z = z.view(b, o, k, ho, wo)
        mix = _output_factors(filt, kernel, b, o, k, weight)
        g_filt = g_kernel = g_channel = g_weight = gx = None
        if ctx.needs_input_grad[3] or ctx.needs_input_grad[5]:
            gmix = (z * g[:, :, None]).sum((3, 4), dtype=acc)  # (B, O, K): dL/d(a_f a_k)
            if filt is not None and ctx.needs_input_grad[3]:
                g_filt = (gmix * kernel[:, None, :] if kernel is not None else gmix).sum(2).to(filt.dtype)
            if kernel is not None and ctx.needs_input_grad[5]:
                g_kernel = (gmix * filt[:, :, None] if filt is not None else gmix).sum(1).to(kernel.dtype)
        gz = (g[:, :, None] * mix.to(dtype)[:, :, :, None, None]).reshape(b, o * k, ho, wo)
        xs = scale_input(x, channel)  # recomputed rather than saved
        need_xs = ctx.needs_input_grad[0] or ctx.needs_input_grad[2]
        gxs, gw, _ = torch.ops.aten.convolution_backward(
            gz, xs, _stacked(weight, dtype), None, list(stride), list(padding), list(dilation), False, [0, 0],
            groups, [need_xs, ctx.needs_input_grad[1], False])
        if ctx.needs_input_grad[1]:
            g_weight = as_param_grad(gw.view(o, k, *weight.shape[2:]).transpose(0, 1), weight)
        if channel is not None and ctx.needs_input_grad[2]:
            g_channel = (gxs * x).sum((2, 3), dtype=acc).to(channel.dtype)
        if ctx.needs_input_grad[0]:
            gx = gxs * channel[:, :, None, None].to(dtype) if channel is not None else gxs
        return gx, g_weight, g_channel, g_filt, None, g_kernel, None, None, None, None


def odconv2d_feature(x, weight, channel, filt, spatial, kernel, stride, padding, dilation, groups) -> Tensor:
    """Attentions on the feature maps, K stacked kernels in one conv, memory-saving backward. Needs
    `spatial is None` (a 1x1 kernel)."""
    if spatial is not None:
        raise ValueError("the 'feature' formulation needs a layer without spatial attention (a 1x1 kernel)")
    return apply_autocast(FeatureODConv, x, weight, (channel, filt, None, kernel),
                           (tuple(stride), tuple(padding), tuple(dilation), groups))


def _no_spatial(shape) -> bool:
    return not shape.has_spatial and shape.depth is None  # 2-D maps only (its reductions are over H, W)


FORMULATION = Formulation("feature", odconv2d_feature, _no_spatial)
