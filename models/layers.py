"""Conv factories that let one architecture definition serve both the static and the ODConv network."""
from __future__ import annotations

from typing import Protocol

from torch import nn

from odconv import ODConv2d


class ConvFactory(Protocol):
    def __call__(
        self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, groups: int = 1
    ) -> nn.Module: ...


def static_conv(in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, groups: int = 1) -> nn.Module:
    return nn.Conv2d(
        in_channels, out_channels, kernel_size, stride, (kernel_size - 1) // 2, groups=groups, bias=False
    )


class ODConvFactory:
    """Builds `ODConv2d` layers with one network-wide `kernel_num` and `reduction`, as the released models do."""

    def __init__(self, kernel_num: int = 1, reduction: float = 0.0625) -> None:
        self.kernel_num = kernel_num
        self.reduction = reduction

    def __call__(
        self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, groups: int = 1
    ) -> nn.Module:
        return ODConv2d(
            in_channels, out_channels, kernel_size, stride, (kernel_size - 1) // 2, groups=groups,
            reduction=self.reduction, kernel_num=self.kernel_num,
        )


def init_static_layers(model: nn.Module) -> None:
    """Initialise the network's static layers as the released models do; ODConv layers init themselves
    (their attention convs get the same He fan_out init the released loop would give them)."""
    inside_odconv = {id(m) for od in model.modules() if isinstance(od, ODConv2d) for m in od.modules()}
    for m in model.modules():
        if id(m) in inside_odconv:
            continue
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.01)
            nn.init.zeros_(m.bias)
