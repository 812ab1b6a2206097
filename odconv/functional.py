"""Functional core of ODConv: the convolution with per-sample attentions applied, independent of the module."""
from __future__ import annotations

from typing import Optional

from torch import Tensor

from . import formulations
from .dispatch import select
from .formulations import LayerShape

__all__ = ["odconv1d", "odconv2d", "odconv3d"]


def odconv2d(
    x: Tensor,
    weight: Tensor,
    channel: Optional[Tensor],
    filt: Optional[Tensor],
    spatial: Optional[Tensor],
    kernel: Optional[Tensor],
    stride: tuple[int, int] = (1, 1),
    padding: tuple[int, int] = (0, 0),
    dilation: tuple[int, int] = (1, 1),
    groups: int = 1,
    bias: Optional[Tensor] = None,
    formulation: Optional[str] = None,
) -> Tensor:
    """y[b] = filt[b] * conv(x[b] * channel[b], sum_i kernel[b,i] * spatial[b] * W_i) (+ bias).

    `weight` is (K, O, I/groups, kh, kw); channel (B, I), filt (B, O), spatial (B, kh, kw) and kernel (B, K) are
    the attentions, each None where the layer has none (attention 1; kernel None means K == 1).
    `formulation`: a name from `odconv.FORMULATIONS` (a ValueError if it cannot compute this layer), or None to
    let `odconv.dispatch` pick (forcing, the measured choice or the rules). All give the same result.
    The same core computes 3-D calls (`odconv3d`), through the formulations that compute them.
    """
    if formulation is None:
        formulation = select(None, x, weight, channel, filt, spatial, kernel, stride, padding, dilation, groups)
    entry = formulations.get(formulation)
    if not entry.can_compute(LayerShape.of_call(x, weight, channel, filt, spatial, kernel, stride, groups)):
        raise ValueError(f"formulation {formulation!r} cannot compute this layer (groups={groups}, "
                         f"spatial attention={spatial is not None}, {x.dim() - 2}-D)")
    out = entry.fn(x, weight, channel, filt, spatial, kernel, stride, padding, dilation, groups)
    if bias is not None:
        out = out + bias.view(-1, *([1] * (out.dim() - 2)))
    return out


def odconv3d(x: Tensor, weight: Tensor, channel, filt, spatial, kernel, stride=(1, 1, 1), padding=(0, 0, 0),
             dilation=(1, 1, 1), groups: int = 1, bias: Optional[Tensor] = None,
             formulation: Optional[str] = None) -> Tensor:
    """`odconv2d` over (B, C, D, H, W) inputs: `weight` (K, O, I/groups, kd, kh, kw), spatial (B, kd, kh, kw)."""
    if x.dim() != 5 or weight.dim() != 6:
        raise ValueError(f"odconv3d needs a 5-D input and a 6-D weight, got {tuple(x.shape)} and {tuple(weight.shape)}")
    return odconv2d(x, weight, channel, filt, spatial, kernel, stride, padding, dilation, groups, bias, formulation)


def odconv1d(x: Tensor, weight: Tensor, channel, filt, spatial, kernel, stride=(1,), padding=(0,), dilation=(1,),
             groups: int = 1, bias: Optional[Tensor] = None, formulation: Optional[str] = None) -> Tensor:
    """`odconv2d` over (B, C, L) inputs: `weight` (K, O, I/groups, k), spatial (B, k); computed as a 2-D call over
    a (1, L) map (views, no copies), so every formulation computes it."""
    if x.dim() != 3 or weight.dim() != 4:
        raise ValueError(f"odconv1d needs a 3-D input and a 4-D weight, got {tuple(x.shape)} and {tuple(weight.shape)}")
    spatial = None if spatial is None else spatial.unsqueeze(1)
    out = odconv2d(x.unsqueeze(2), weight.unsqueeze(3), channel, filt, spatial, kernel, (1, *stride), (0, *padding),
                   (1, *dilation), groups, bias, formulation)
    return out.squeeze(2)
