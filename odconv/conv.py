"""`ODConv2d`: omni-dimensional dynamic convolution, a drop-in replacement for `nn.Conv2d` (and `ODConv1d`,
`ODConv3d` for `nn.Conv1d`, `nn.Conv3d`), and `DynamicConvNd`, the base they share with CondConv and DyConv (kernel
mixing, formulations, dispatch, forward) in any number of spatial dimensions.

A 1-D layer runs through the 2-D core as a conv over a (1, L) map (its input viewed as (B, C, 1, L), its kernels
as (K, O, I/g, 1, k)), so every formulation, the dispatch, `explain` and measured tuning apply to it unchanged.
A 3-D layer runs through the formulations that compute N spatial dimensions (see odconv/formulations).

Li, Zhou, Yao. "Omni-Dimensional Dynamic Convolution." ICLR 2022. https://openreview.net/forum?id=DmpCfq6Mg39
"""
from __future__ import annotations

import math
from typing import Callable, Optional, Union

import torch
from torch import Tensor, nn
from torch.nn.modules.utils import _ntuple

from .attention import ATTENTIONS, ODAttention, check_attention_args
from .dispatch import select
from .formulations import LayerShape
from .functional import odconv2d

IntOrPair = Union[int, tuple[int, ...]]


def _resolve_padding(padding, kernel_size, stride, dilation) -> tuple[int, ...]:
    dims = len(kernel_size)
    if isinstance(padding, str):
        if padding == "valid":
            return (0,) * dims
        if padding != "same":
            raise ValueError(f"Invalid padding string {padding!r}, should be one of ['valid', 'same']")
        if stride != (1,) * dims:
            raise ValueError("padding='same' is not supported for strided convolutions")
        if any(d * (k - 1) % 2 for d, k in zip(dilation, kernel_size)):
            raise ValueError("padding='same' needs dilation * (kernel_size - 1) to be even in a dynamic conv")
        return tuple(d * (k - 1) // 2 for d, k in zip(dilation, kernel_size))
    return _ntuple(dims)(padding)


class DynamicConvNd(nn.Module):
    """A convolution whose kernel is a per-sample mix of `kernel_num` kernels, possibly modulated further, over
    `dims` spatial dimensions (a class attribute: `DynamicConv1d`, `DynamicConv2d`, `DynamicConv3d`).

    The base of ODConv, CondConv and DyConv: it owns the geometry, the kernels ``weight`` (K, O, I/g, *kernel_size),
    the optional static bias, the choice of formulation and the forward pass. A subclass passes `make_attention`,
    which builds ``self.attention``: a module mapping the input to `odconv.Attentions` (None = attention of 1).
    """

    dims: int  # number of spatial dimensions

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: IntOrPair,
        stride: IntOrPair,
        padding: Union[IntOrPair, str],
        dilation: IntOrPair,
        groups: int,
        kernel_num: int,
        bias: bool,
        make_attention: Callable[..., nn.Module],
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        if in_channels <= 0 or out_channels <= 0:
            raise ValueError(f"in_channels and out_channels must be positive, got {in_channels} and {out_channels}")
        if groups <= 0:
            raise ValueError(f"groups must be a positive integer, got {groups}")
        if in_channels % groups != 0:
            raise ValueError(f"in_channels must be divisible by groups, got {in_channels} and groups={groups}")
        if out_channels % groups != 0:
            raise ValueError(f"out_channels must be divisible by groups, got {out_channels} and groups={groups}")
        if kernel_num < 1:
            raise ValueError(f"kernel_num must be at least 1, got {kernel_num}")
        factory_kwargs = {"device": device, "dtype": dtype}
        self.in_channels = in_channels
        self.out_channels = out_channels
        if getattr(self, "dims", None) not in (1, 2, 3):
            raise TypeError(f"{type(self).__name__} needs dims (1, 2 or 3): build ODConv1d/2d/3d or a DynamicConvXd")
        ntuple = _ntuple(self.dims)
        self.kernel_size = ntuple(kernel_size)
        self.stride = ntuple(stride)
        self.dilation = ntuple(dilation)
        if min(self.kernel_size) < 1 or min(self.stride) < 1 or min(self.dilation) < 1:
            raise ValueError("kernel_size, stride and dilation must be positive")
        self.padding = _resolve_padding(padding, self.kernel_size, self.stride, self.dilation)
        self.groups = groups
        self.kernel_num = kernel_num
        # Built (and initialised) before the kernels, so a seed gives the same layer as before the base existed.
        self.attention = make_attention(self.kernel_size, **factory_kwargs)
        self.weight = nn.Parameter(
            torch.empty(kernel_num, out_channels, in_channels // groups, *self.kernel_size, **factory_kwargs)
        )
        self.bias = nn.Parameter(torch.empty(out_channels, **factory_kwargs)) if bias else None
        # None: odconv.dispatch picks per call from the input's shape; a name from odconv.FORMULATIONS forces it.
        self.formulation: Optional[str] = None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # As released: each of the K kernels gets its own He init (fan_out, relu), as a static conv would.
        for i in range(self.kernel_num):
            nn.init.kaiming_normal_(self.weight[i], mode="fan_out", nonlinearity="relu")
        if self.bias is not None:
            fan_in = self.weight[0][0].numel()
            bound = 1 / math.sqrt(fan_in)
            nn.init.uniform_(self.bias, -bound, bound)

    def _core_geometry(self) -> tuple[tuple, tuple, tuple, tuple]:
        """(kernel_size, stride, padding, dilation) as the core sees them: a 1-D layer's with a leading row of one
        (kernel 1, stride 1, padding 0, dilation 1)."""
        if self.dims == 1:
            return (1, *self.kernel_size), (1, *self.stride), (0, *self.padding), (1, *self.dilation)
        return self.kernel_size, self.stride, self.padding, self.dilation

    def _check_input(self, x: Tensor) -> None:
        if x.dim() != self.dims + 2:
            raise ValueError(f"{type(self).__name__} expects a (batch, channels, {self._spatial_names()}) input "
                             f"of {self.dims + 2} dimensions, got shape {tuple(x.shape)}")

    def _spatial_names(self) -> str:
        return {1: "length", 2: "height, width", 3: "depth, height, width"}[self.dims]

    def layer_shape(self, x: Tensor) -> LayerShape:
        """What the formulation dispatch looks at for input `x` (a 1-D layer's as the 2-D call it runs as)."""
        kernel_size, stride, _, _ = self._core_geometry()
        return LayerShape(
            x.shape[0], self.in_channels, self.out_channels, x.shape[-2] if self.dims > 1 else 1, x.shape[-1],
            kernel_size, stride, self.groups, self.kernel_num, self.attention.spatial_fc is not None,
            depth=x.shape[-3] if self.dims == 3 else None,
        )

    def _conv_forward(self, x: Tensor, weight: Tensor, bias: Optional[Tensor]) -> Tensor:
        self._check_input(x)
        att = self.attention(x)
        spatial = att.spatial
        _, stride, padding, dilation = self._core_geometry()
        if self.dims == 1:  # as a 2-D conv over a (1, L) map: views, no copies
            x, weight = x.unsqueeze(2), weight.unsqueeze(3)
            spatial = None if spatial is None else spatial.unsqueeze(1)
        args = (x, weight, att.channel, att.filter, spatial, att.kernel, stride, padding, dilation, self.groups)
        out = odconv2d(*args, bias, select(self.formulation, *args))
        return out.squeeze(2) if self.dims == 1 else out

    def forward(self, x: Tensor) -> Tensor:
        return self._conv_forward(x, self.weight, self.bias)

    def extra_repr(self) -> str:
        s = f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}"
        if any(self.padding):
            s += f", padding={self.padding}"
        if any(d != 1 for d in self.dilation):
            s += f", dilation={self.dilation}"
        if self.groups != 1:
            s += f", groups={self.groups}"
        if self.bias is not None:
            s += ", bias=True"
        return s


class DynamicConv1d(DynamicConvNd):
    """`DynamicConvNd` over one spatial dimension: input (B, C, L), kernels (K, O, I/g, k)."""

    dims = 1


class DynamicConv2d(DynamicConvNd):
    """`DynamicConvNd` over two spatial dimensions: input (B, C, H, W), kernels (K, O, I/g, kh, kw)."""

    dims = 2


class DynamicConv3d(DynamicConvNd):
    """`DynamicConvNd` over three spatial dimensions: input (B, C, D, H, W), kernels (K, O, I/g, kd, kh, kw)."""

    dims = 3


class ODConvNd(DynamicConvNd):
    """A convolution whose kernel is modulated per sample along space, input channels, output channels and
    kernel number by attentions computed from the input (no bias by default, as released); the dimension-free
    part of ODConv1d, ODConv2d and ODConv3d.

    For sample b: ``y[b] = a_f[b] * conv(x[b] * a_c[b], sum_i a_k[b, i] * a_s[b] * W_i)``.

    The paper's ablations are arguments, the released layer the default: `attentions` (any subset of "spatial",
    "channel", "filter", "kernel"; an attention left out is 1), `reduction` and `min_channel` (hidden width
    ``max(int(in_channels * reduction), min_channel)``), `kernel_num`, `spatial_act` ("sigmoid" per tap as
    released, or "softmax" over the kernel's taps) and `attention_norm` ("batch": the released BatchNorm, which
    cannot train on one-sample batches; "layer": GroupNorm(1, hidden), batch-independent; "none"). See ODAttention.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: IntOrPair,
        stride: IntOrPair = 1,
        padding: Union[IntOrPair, str] = 0,
        dilation: IntOrPair = 1,
        groups: int = 1,
        reduction: float = 0.0625,
        kernel_num: int = 4,
        min_channel: int = 16,
        bias: bool = False,
        attentions=ATTENTIONS,
        spatial_act: str = "sigmoid",
        attention_norm: str = "batch",
        device=None,
        dtype=None,
    ) -> None:
        if not reduction > 0:
            raise ValueError(f"reduction must be positive, got {reduction}")
        if min_channel < 1:
            raise ValueError(f"min_channel must be at least 1, got {min_channel}")
        attentions = check_attention_args(attentions, kernel_num, spatial_act, attention_norm)

        def make_attention(kernel_size, **factory_kwargs):
            return ODAttention(
                in_channels, out_channels, kernel_size, groups, reduction, kernel_num, min_channel,
                attentions, spatial_act, attention_norm, **factory_kwargs,
            )

        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, kernel_num, bias,
                         make_attention, device, dtype)
        self.reduction = reduction
        self.min_channel = min_channel
        self.attentions = attentions
        self.spatial_act = spatial_act
        self.attention_norm = attention_norm

    @property
    def temperature(self) -> float:
        return float(self.attention.temperature)

    def update_temperature(self, temperature: float) -> None:
        """Softmax/sigmoid temperature of every attention (released name); annealed 30 -> 1 early in training."""
        self.attention.update_temperature(temperature)

    def extra_repr(self) -> str:
        s = super().extra_repr() + f", kernel_num={self.kernel_num}"
        if self.reduction != 0.0625:
            s += f", reduction={self.reduction}"
        if self.min_channel != 16:
            s += f", min_channel={self.min_channel}"
        if self.attentions != ATTENTIONS:
            s += f", attentions={self.attentions}"
        if self.spatial_act != "sigmoid":
            s += f", spatial_act={self.spatial_act!r}"
        if self.attention_norm != "batch":
            s += f", attention_norm={self.attention_norm!r}"
        return s


class ODConv1d(ODConvNd, DynamicConv1d):
    """ODConv over sequences, a drop-in replacement for `nn.Conv1d`: ODConv2d's arguments and parameter names,
    ``weight`` (K, O, I/g, k), the attention's 1x1 convs and BatchNorm one-dimensional and its spatial head of k
    outputs (as the released code's maintainers' 1-D version). Computed as a 2-D call over a (1, L) map."""


class ODConv2d(ODConvNd, DynamicConv2d):
    """ODConv (Li et al., ICLR 2022), a drop-in replacement for `nn.Conv2d`, with the released layer's names and
    defaults. See `ODConvNd` for the arguments."""


class ODConv3d(ODConvNd, DynamicConv3d):
    """ODConv over volumes (or video), a drop-in replacement for `nn.Conv3d`: ODConv2d's arguments and parameter
    names, ``weight`` (K, O, I/g, kd, kh, kw), a spatial head of kd*kh*kw outputs."""
