"""Functional core of ODConv: the convolution with per-sample attentions applied, independent of the module."""
from __future__ import annotations

from typing import Optional

from torch import Tensor

from .autograd import odconv2d_columns_saving, odconv2d_folded
from .feature import odconv2d_feature
from .formulations import FORMULATIONS, aggregate_kernels, odconv2d_grouped, supported
from .taps import odconv2d_taps

__all__ = ["aggregate_kernels", "odconv2d", "odconv2d_columns_saving", "odconv2d_feature", "odconv2d_folded",
           "odconv2d_grouped", "odconv2d_taps"]


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
    formulation: str = "grouped",
) -> Tensor:
    """y[b] = filt[b] * conv(x[b] * channel[b], sum_i kernel[b,i] * spatial[b] * W_i) (+ bias).

    `formulation` is one of `FORMULATIONS` (see odconv/formulations.py); all give the same result.
    """
    if formulation not in FORMULATIONS:
        raise ValueError(f"Unknown ODConv formulation {formulation!r}, should be one of {list(FORMULATIONS)}")
    if not supported(formulation, groups, spatial is not None):
        raise ValueError(f"formulation {formulation!r} cannot compute this layer (groups={groups}, "
                         f"spatial attention={spatial is not None})")
    args = (x, weight, channel, filt, spatial, kernel, stride, padding, dilation, groups)
    if formulation == "grouped":
        out = odconv2d_grouped(*args)
    elif formulation == "columns":
        out = odconv2d_columns_saving(*args)
    elif formulation == "taps":
        out = odconv2d_taps(*args)
    elif formulation == "feature":
        out = odconv2d_feature(*args)
    else:
        out = odconv2d_folded(*args, engine="grouped" if formulation == "folded" else "bmm")
    if bias is not None:
        out = out + bias[:, None, None]
    return out
