"""`DyConv2d` (and `DyConv1d`, `DyConv3d`): dynamic convolution (attention over K kernels) on ODConv's
kernel-mixing code path.

Chen, Dai, Liu, Chen, Yuan, Liu. "Dynamic Convolution: Attention over Convolution Kernels." CVPR 2020.
https://arxiv.org/abs/1912.03458
"""
from __future__ import annotations

from typing import Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .attention import Attentions, global_avg_pool
from .conv import DynamicConv1d, DynamicConv2d, DynamicConv3d, DynamicConvNd, IntOrPair


class DyConvAttention(nn.Module):
    """The paper's kernel attention, a squeeze-and-excitation branch: GAP -> FC (C_in / reduction) -> ReLU ->
    FC (K) -> softmax(z / T).

    No normalisation in the hidden layer: the paper's attention is two FC layers with a ReLU between them (its
    Eq. and Fig. 3), and the widely used PyTorch re-implementation (kaijieshi7/Dynamic-convolution-Pytorch) has
    none either. The first FC has no bias and the second has one, as in that re-implementation; hidden width
    ``max(C_in // reduction, 1)``. The temperature T is runtime state (a non-persistent buffer, 1 when built):
    the training loop anneals it from 30 to 1 over the first 10 epochs through `odconv.set_temperature`.
    """

    # DyConv has no spatial attention; read by the formulation dispatch, as ODAttention's optional head.
    spatial_fc = None

    def __init__(self, in_channels: int, kernel_num: int, reduction: int, device=None, dtype=None) -> None:
        super().__init__()
        factory_kwargs = {"device": device, "dtype": dtype}
        hidden = max(in_channels // reduction, 1)
        self.register_buffer("temperature", torch.tensor(1.0, **factory_kwargs), persistent=False)
        self.fc1 = nn.Linear(in_channels, hidden, bias=False, **factory_kwargs)
        self.fc2 = nn.Linear(hidden, kernel_num, **factory_kwargs)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # As the re-implementation and ODConv's attention: He init (fan_out, relu) and a zero bias, so the
        # softmax starts near uniform (and exactly uniform at temperature 30 up to a few percent).
        for fc in (self.fc1, self.fc2):
            nn.init.kaiming_normal_(fc.weight, mode="fan_out", nonlinearity="relu")
        nn.init.zeros_(self.fc2.bias)

    def update_temperature(self, temperature: float) -> None:
        self.temperature.fill_(float(temperature))

    def forward(self, x: Tensor) -> Attentions:
        z = self.fc2(F.relu(self.fc1(global_avg_pool(x))))
        kernel = torch.softmax(z / self.temperature, dim=1)
        return Attentions(None, None, None, kernel)  # only the kernel attention: the others are 1

    def extra_repr(self) -> str:
        return f"hidden={self.fc1.out_features}"


class DyConvNd(DynamicConvNd):
    """DyConv (Chen et al., CVPR 2020): ``y[b] = conv(x[b], sum_i pi_i(x[b]) W_i)`` with
    ``pi(x) = softmax(FC(ReLU(FC(GAP(x)))) / T)``, K = `kernel_num` kernels (4 in the paper), reduction 4.

    Kernels: He init (fan_out, relu) per kernel, as ODConv's. `bias=True` adds one static bias (the paper
    aggregates a bias per kernel; the zoo's convs are followed by BatchNorm and have none). Computed by the same
    formulations as ODConv2d with only the kernel attention set.
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
        kernel_num: int = 4,
        reduction: int = 4,
        bias: bool = False,
        device=None,
        dtype=None,
    ) -> None:
        if reduction < 1:
            raise ValueError(f"reduction must be a positive integer, got {reduction}")

        def make_attention(kernel_size, **factory_kwargs):
            return DyConvAttention(in_channels, kernel_num, reduction, **factory_kwargs)

        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, kernel_num, bias,
                         make_attention, device, dtype)
        self.reduction = reduction

    @property
    def temperature(self) -> float:
        return float(self.attention.temperature)

    def update_temperature(self, temperature: float) -> None:
        """Softmax temperature of the kernel attention; the paper anneals it from 30 to 1 over 10 epochs."""
        self.attention.update_temperature(temperature)

    def extra_repr(self) -> str:
        s = super().extra_repr() + f", kernel_num={self.kernel_num}"
        if self.reduction != 4:
            s += f", reduction={self.reduction}"
        return s


class DyConv1d(DyConvNd, DynamicConv1d):
    """DyConv over sequences, a drop-in replacement for `nn.Conv1d`: DyConv2d's arguments and parameter names,
    ``weight`` (K, O, I/g, k)."""


class DyConv2d(DyConvNd, DynamicConv2d):
    """DyConv for images, a drop-in replacement for `nn.Conv2d`. See `DyConvNd` for the arguments."""


class DyConv3d(DyConvNd, DynamicConv3d):
    """DyConv over volumes, a drop-in replacement for `nn.Conv3d`: DyConv2d's arguments and parameter names,
    ``weight`` (K, O, I/g, kd, kh, kw)."""
