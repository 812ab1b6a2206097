"""`CondConv2d` (and `CondConv1d`, `CondConv3d`): conditionally parameterised convolution on ODConv's kernel-mixing
code path.

Yang, Bender, Le, Ngiam. "CondConv: Conditionally Parameterized Convolutions for Efficient Inference."
NeurIPS 2019. https://arxiv.org/abs/1904.04971
"""
from __future__ import annotations

from typing import Union

import torch
from torch import Tensor, nn

from .attention import Attentions, global_avg_pool
from .conv import DynamicConv1d, DynamicConv2d, DynamicConv3d, DynamicConvNd, IntOrPair


class CondConvRouting(nn.Module):
    """The paper's routing function r(x) = sigmoid(GAP(x) R): one fully connected layer, one sigmoid per expert.

    The experts' weights are independent sigmoids (they do not sum to 1), unlike DyConv's softmax. As in the
    paper's Eq. 2 each layer has its own routing function (the reference TF EfficientNet code shares one per
    block); no dropout on the routing input (the paper uses none in its ResNet and MobileNetV2 experiments).
    """

    # CondConv has no spatial attention; read by the formulation dispatch, as ODAttention's optional head.
    spatial_fc = None

    def __init__(self, in_channels: int, num_experts: int, device=None, dtype=None) -> None:
        super().__init__()
        self.fc = nn.Linear(in_channels, num_experts, device=device, dtype=dtype)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # As the reference code (tensorflow/tpu condconv, a Keras Dense layer with its defaults): Glorot uniform
        # weights and zero biases, so the routing weights start near sigmoid(0) = 0.5.
        nn.init.xavier_uniform_(self.fc.weight)
        nn.init.zeros_(self.fc.bias)

    def forward(self, x: Tensor) -> Attentions:
        routing = torch.sigmoid(self.fc(global_avg_pool(x)))
        return Attentions(None, None, None, routing)  # only the kernel attention: the others are 1


class CondConvNd(DynamicConvNd):
    """CondConv (Yang et al., NeurIPS 2019): ``y[b] = conv(x[b], sum_i r_i(x[b]) W_i)`` with
    ``r(x) = sigmoid(GAP(x) R + c)``, `num_experts` kernels (8 in the ODConv paper's comparison).

    Kernels: He init (fan_out, relu) per expert, as the reference code's initializer does for every expert and as
    ODConv's kernels. `bias=True` adds one static bias (the paper routes a bias per expert; the zoo's convs are
    followed by BatchNorm and have none). Computed by the same formulations as ODConv2d with only the kernel
    attention set, so every fast path and the dispatch apply unchanged.
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
        num_experts: int = 8,
        bias: bool = False,
        device=None,
        dtype=None,
    ) -> None:
        if num_experts < 1:
            raise ValueError(f"num_experts must be at least 1, got {num_experts}")

        def make_attention(kernel_size, **factory_kwargs):
            return CondConvRouting(in_channels, num_experts, **factory_kwargs)

        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, num_experts, bias,
                         make_attention, device, dtype)

    @property
    def num_experts(self) -> int:
        return self.kernel_num

    def extra_repr(self) -> str:
        return super().extra_repr() + f", num_experts={self.num_experts}"


class CondConv1d(CondConvNd, DynamicConv1d):
    """CondConv over sequences, a drop-in replacement for `nn.Conv1d`: CondConv2d's arguments and parameter names,
    ``weight`` (K, O, I/g, k)."""


class CondConv2d(CondConvNd, DynamicConv2d):
    """CondConv for images, a drop-in replacement for `nn.Conv2d`. See `CondConvNd` for the arguments."""


class CondConv3d(CondConvNd, DynamicConv3d):
    """CondConv over volumes, a drop-in replacement for `nn.Conv3d`: CondConv2d's arguments and parameter names,
    ``weight`` (K, O, I/g, kd, kh, kw)."""
