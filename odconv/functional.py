"""Functional core of ODConv: the convolution with per-sample attentions applied, independent of the module."""
from __future__ import annotations

from typing import Optional

from torch import Tensor

from . import formulations
from .dispatch import select
from .formulations import LayerShape

__all__ = ["odconv2d"]


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
    """
    if formulation is None:
        formulation = select(None, x, weight, channel, filt, spatial, kernel, stride, padding, dilation, groups)
    entry = formulations.get(formulation)
    if not entry.can_compute(LayerShape.of_call(x, weight, channel, filt, spatial, kernel, stride, groups)):
        raise ValueError(f"formulation {formulation!r} cannot compute this layer (groups={groups}, "
                         f"spatial attention={spatial is not None})")
    out = entry.fn(x, weight, channel, filt, spatial, kernel, stride, padding, dilation, groups)
    if bias is not None:
        out = out + bias[:, None, None]
    return out
