"""``columns``: the input unfolded (im2col, NHWC) and scaled by a_c x a_s, one GEMM shared by the batch against
the K stacked kernels, mixed by a_k x a_f. No per-sample kernel: the winner where that kernel (O*C*kh*kw) dwarfs
the feature maps. The backward pass saves the input and the pre-mix GEMM result, not the (kh*kw times larger)
columns, which it rebuilds from the input. ``groups == 1`` only.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from .common import Formulation, apply_autocast, col2im_nhwc, im2col_nhwc, like_input, output_mix, ungrouped


def _as_image(cols: Tensor) -> Tensor:
    """(B, Ho, Wo, C, T) columns as a channels_last (B, C*T, Ho, Wo) image, so the shared GEMM runs as a 1x1
    conv: oneDNN's 1x1 conv does 230 GMAC/s on this project's 2-core AMD machine where MKL's sgemm does 100."""
    b, ho, wo = cols.shape[:3]
    return cols.reshape(b, ho, wo, -1).permute(0, 3, 1, 2)


def _columns_scale(channel: Optional[Tensor], spatial: Optional[Tensor], b: int, taps: int) -> Optional[Tensor]:
    """a_c (x) a_s per sample: (B, C or 1, T), the factor on each column of the unfolded input; None if both are 1."""
    if spatial is None:
        return None if channel is None else channel[:, :, None]
    s = spatial.reshape(b, 1, taps)
    return s if channel is None else channel[:, :, None] * s


def _scaled(cols: Tensor, scale: Optional[Tensor]) -> Tensor:
    return cols if scale is None else cols * scale[:, None, None].to(cols.dtype)


class ColumnsODConv(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, channel, filt, spatial, kernel, stride, padding, dilation):
        k, o, c = weight.shape[:3]
        b = x.shape[0]
        cols = im2col_nhwc(x, weight.shape[-2:], stride, padding, dilation)
        _, ho, wo, _, t = cols.shape
        cs = _as_image(_scaled(cols, _columns_scale(channel, spatial, b, t)))
        z = F.conv2d(cs, weight.reshape(k * o, c * t, 1, 1).to(x.dtype)).permute(0, 2, 3, 1)
        z = z.reshape(b, ho * wo, k * o)  # a view: the 1x1 conv of a channels_last input is channels_last
        mix = output_mix(filt, kernel, b, k, o, x.dtype)
        if mix is None:
            out = z  # K == 1: a missing kernel attention means the single kernel
        elif k == 1:
            out = z * mix[:, 0][:, None]
        else:
            out = (z.view(b, ho * wo, k, o) * mix[:, None]).sum(2)
        ctx.save_for_backward(x, weight, channel, filt, spatial, kernel, z)
        ctx.conf = (stride, padding, dilation)
        return like_input(out.view(b, ho, wo, o).permute(0, 3, 1, 2), x)

    @staticmethod
    def backward(ctx, grad_out):
        x, weight, channel, filt, spatial, kernel, z = ctx.saved_tensors
        stride, padding, dilation = ctx.conf
        k, o, c = weight.shape[:3]
        b = x.shape[0]
        cols = im2col_nhwc(x, weight.shape[-2:], stride, padding, dilation)
        _, ho, wo, _, t = cols.shape
        l = ho * wo
        g = grad_out.permute(0, 2, 3, 1).reshape(b, l, 1, o).to(z.dtype)
        z4 = z.view(b, l, k, o)
        mix = output_mix(filt, kernel, b, k, o, z.dtype)
        g_filt = g_kernel = g_weight = g_channel = g_spatial = gx = None
        if mix is not None:
            # Reductions over the pixels in at least float32, also when the conv runs in bf16.
            acc = torch.promote_types(z.dtype, torch.float32)
            gmix = torch.einsum("blko,blo->bko", z4.to(acc), g[:, :, 0].to(acc))  # dL/d mix
            if filt is not None and ctx.needs_input_grad[3]:
                g_filt = (gmix * (kernel[:, :, None] if kernel is not None else 1.0)).sum(1).to(filt.dtype)
            if kernel is not None and ctx.needs_input_grad[5]:
                g_kernel = (gmix * (filt[:, None, :] if filt is not None else 1.0)).sum(2).to(kernel.dtype)
            gz = (g * mix[:, None]).reshape(b, l, k * o)
        else:
            gz = g.reshape(b, l, o)
        scale = _columns_scale(channel, spatial, b, t)  # (B, C or 1, T)
        w1 = weight.reshape(k * o, c * t, 1, 1).to(x.dtype)
        cs = _as_image(_scaled(cols, scale))
        gcs, gw1, _ = torch.ops.aten.convolution_backward(
            gz.reshape(b, ho, wo, k * o).permute(0, 3, 1, 2), cs, w1, None, [1, 1], [0, 0], [1, 1], False, [0, 0],
            1, [True, ctx.needs_input_grad[1], False])
        if ctx.needs_input_grad[1]:
            g_weight = gw1.view(weight.shape).to(weight.dtype)
        gcs = gcs.permute(0, 2, 3, 1).reshape(b, ho, wo, c, t)  # dL/d scaled columns
        need_channel = channel is not None and ctx.needs_input_grad[2]
        need_spatial = spatial is not None and ctx.needs_input_grad[4]
        if need_channel or need_spatial:
            acc = torch.promote_types(x.dtype, torch.float32)
            gscale = torch.einsum("bhwct,bhwct->bct", gcs.to(acc), cols.to(acc))
            if need_channel:
                g_channel = (gscale * spatial.reshape(b, 1, t) if spatial is not None else gscale).sum(2)
                g_channel = g_channel.to(channel.dtype)
            if need_spatial:
                g_spatial = (gscale * channel[:, :, None] if channel is not None else gscale).sum(1)
                g_spatial = g_spatial.view(spatial.shape).to(spatial.dtype)
        if ctx.needs_input_grad[0]:
            gx = col2im_nhwc(_scaled(gcs, scale), x.shape, weight.shape[-2:], stride, padding, dilation)
        return gx, g_weight, g_channel, g_filt, g_spatial, g_kernel, None, None, None


def odconv2d_columns(x, weight, channel, filt, spatial, kernel, stride, padding, dilation, groups) -> Tensor:
    if groups != 1:
        raise ValueError("the 'columns' formulation needs groups == 1")
    return apply_autocast(ColumnsODConv, x, weight, (channel, filt, spatial, kernel),
                          (tuple(stride), tuple(padding), tuple(dilation)))


FORMULATION = Formulation("columns", odconv2d_columns, ungrouped)
