"""``bmm``: the ``folded`` per-sample kernel applied as one batched matrix product over the unfolded input
(im2col; a free view for 1x1 stride-1 kernels), with folded's memory-saving backward (the columns are recomputed
there). No grouped convolution, whose CPU kernels are slow for many groups. ``groups == 1`` only.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .common import Formulation, col2im_nhwc, im2col_nhwc, like_input, ungrouped
from .folded import Engine, apply_folded


def _is_pointwise(kernel_size, stride, padding) -> bool:
    return tuple(kernel_size) == (1, 1) and tuple(stride) == (1, 1) and tuple(padding) == (0, 0)


def _forward(x, w, stride, padding, dilation, groups):
    b, c, h, wd = x.shape
    o, kh, kw = w.shape[1], w.shape[3], w.shape[4]
    wm = w.reshape(b, o, -1)
    if _is_pointwise((kh, kw), stride, padding):
        cols = x.flatten(2)  # (B, C, L), a view in either memory format
        if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
            # Rows are pixels: the result is channels_last, like a static conv's on such an input.
            return torch.bmm(cols.transpose(1, 2), wm.transpose(1, 2)).transpose(1, 2).view(b, o, h, wd)
        return torch.bmm(wm, cols).view(b, o, h, wd)
    cols = im2col_nhwc(x, (kh, kw), stride, padding, dilation)  # (B, Ho, Wo, C, T)
    ho, wo = cols.shape[1:3]
    out = torch.bmm(cols.view(b, ho * wo, -1), wm.transpose(1, 2))  # (B, L, O): channels_last
    return like_input(out.view(b, ho, wo, o).permute(0, 3, 1, 2), x)


def _backward(x, w, grad_out, stride, padding, dilation, groups, need_x: bool):
    """(grad of x or None, grad of the per-sample kernel w) for `_forward`."""
    b, c, h, wd = x.shape
    o, kh, kw = w.shape[1], w.shape[3], w.shape[4]
    wm = w.reshape(b, o, -1)
    g = grad_out.reshape(b, o, -1)
    gx = None
    if _is_pointwise((kh, kw), stride, padding):
        cols = x.flatten(2)
        gw = torch.bmm(g, cols.transpose(1, 2)).view(w.shape)
        if need_x:
            gx = torch.bmm(wm.transpose(1, 2), g).view(b, c, h, wd)
        return gx, gw
    cols = im2col_nhwc(x, (kh, kw), stride, padding, dilation)
    ho, wo = cols.shape[1:3]
    gw = torch.bmm(g, cols.view(b, ho * wo, -1)).view(w.shape)
    if need_x:
        gcols = torch.bmm(g.transpose(1, 2), wm).view(b, ho, wo, c, kh * kw)
        gx = col2im_nhwc(gcols, x.shape, (kh, kw), stride, padding, dilation)
    return gx, gw


BMM_ENGINE = Engine(_forward, _backward)


def odconv2d_bmm(x, weight, channel, filt, spatial, kernel, stride, padding, dilation, groups) -> Tensor:
    if groups != 1:
        raise ValueError("the 'bmm' formulation needs groups == 1")
    return apply_folded(BMM_ENGINE, x, weight, channel, filt, spatial, kernel, stride, padding, dilation, groups)


FORMULATION = Formulation("bmm", odconv2d_bmm, ungrouped)


def conv_per_sample_taps(x: Tensor, kernels: Tensor, kernel_size, stride, padding, dilation) -> Tensor:
    """y[b] = conv(x[b], W[b]) for a 1-D or 2-D input and groups 1, the per-sample kernel given tap-major,
    (B, T, O, I) with T = prod(kernel_size) (the order KernelWarehouse assembles it in, so it is never
    transposed): one batched GEMM per sample and tap of the tap's (O, I) matrix with the input pixels that tap
    reads, then the sum over taps.

    On small maps this replaces the grouped conv over the batch, whose CPU kernels are slowest there (a ResNet18
    layer3 conv at 2x2, batch 64: 0.6 s of backward), and the two transpositions of a per-sample kernel of
    B*O*I*T elements that the grouped conv's layout needs (BENCHMARKS.md, the family's later members)."""
    if x.dim() == 3:  # 1-D: one row of a 2-D map
        return conv_per_sample_taps(x.unsqueeze(2), kernels, (1, *kernel_size), (1, *stride), (0, *padding),
                                    (1, *dilation)).squeeze(2)
    b, c, h, w = x.shape
    t, o = kernels.shape[1], kernels.shape[2]
    out_hw = [(n + 2 * p - d * (k - 1) - 1) // s + 1
              for n, k, s, p, d in zip((h, w), kernel_size, stride, padding, dilation)]
    cols = F.unfold(x, tuple(kernel_size), dilation=tuple(dilation), padding=tuple(padding), stride=tuple(stride))
    cols = cols.view(b, c, t, -1).transpose(1, 2).reshape(b * t, c, -1)  # (B*T, I, L): the input, T times
    out = torch.bmm(kernels.reshape(b * t, o, c).to(cols.dtype), cols).view(b, t, o, -1)
    out = out.squeeze(1) if t == 1 else out.sum(1)
    return out.view(b, o, *out_hw)
