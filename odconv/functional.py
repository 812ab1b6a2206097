"""Functional core of ODConv: the convolution with per-sample attentions applied, independent of the module."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor


def aggregate_kernels(
    weight: Tensor, spatial: Optional[Tensor], kernel: Optional[Tensor]
) -> Tensor:
    """Per-sample kernel sum_i kernel[b, i] * spatial[b] * W_i: (B, O, I/g, kh, kw).

    Without kernel attention (K == 1) the single kernel is used; without spatial attention it is 1.
    """
    if kernel is None:
        w = weight[0].unsqueeze(0)  # (1, O, I/g, kh, kw)
    else:
        w = torch.einsum("bk,koihw->boihw", kernel, weight)
    if spatial is not None:
        w = w * spatial[:, None, None]
    return w


def odconv2d_grouped(
    x: Tensor,
    weight: Tensor,
    channel: Tensor,
    filt: Optional[Tensor],
    spatial: Optional[Tensor],
    kernel: Optional[Tensor],
    stride: tuple[int, int],
    padding: tuple[int, int],
    dilation: tuple[int, int],
    groups: int,
) -> Tensor:
    """The released formulation: one per-sample kernel per sample, run as one grouped conv over the batch."""
    b, c, h, w_ = x.shape
    x = x * channel[:, :, None, None]
    if spatial is None and kernel is None:
        # 1x1, single kernel: no per-sample kernel exists, the static conv is exact.
        out = F.conv2d(x, weight[0], None, stride, padding, dilation, groups)
    else:
        agg = aggregate_kernels(weight, spatial, kernel)
        if agg.shape[0] == 1:
            out = F.conv2d(x, agg[0], None, stride, padding, dilation, groups)
        else:
            agg = agg.reshape(-1, *agg.shape[2:])  # (B*O, I/g, kh, kw)
            out = F.conv2d(x.reshape(1, b * c, h, w_), agg, None, stride, padding, dilation, groups * b)
            out = out.view(b, -1, out.shape[-2], out.shape[-1])
    if filt is not None:
        out = out * filt[:, :, None, None]
    return out


def odconv2d(
    x: Tensor,
    weight: Tensor,
    channel: Tensor,
    filt: Optional[Tensor],
    spatial: Optional[Tensor],
    kernel: Optional[Tensor],
    stride: tuple[int, int] = (1, 1),
    padding: tuple[int, int] = (0, 0),
    dilation: tuple[int, int] = (1, 1),
    groups: int = 1,
    bias: Optional[Tensor] = None,
) -> Tensor:
    """y[b] = filt[b] * conv(x[b] * channel[b], sum_i kernel[b,i] * spatial[b] * W_i) (+ bias)."""
    out = odconv2d_grouped(x, weight, channel, filt, spatial, kernel, stride, padding, dilation, groups)
    if bias is not None:
        out = out + bias[:, None, None]
    return out
