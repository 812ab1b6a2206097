"""`create_dynamic_conv`: the one place that maps a dynamic-convolution kind to its layer (the zoo injects it)."""
from __future__ import annotations

import inspect

from torch import nn

from .condconv import CondConv2d
from .conv import IntOrPair, ODConv2d
from .dyconv import DyConv2d
from .fdconv import FDConv2d

DYNAMIC_CONVS: dict[str, type[nn.Module]] = {
    "od": ODConv2d, "condconv": CondConv2d, "dyconv": DyConv2d, "fd": FDConv2d,
}


def create_dynamic_conv(
    kind: str,
    in_channels: int,
    out_channels: int,
    kernel_size: IntOrPair,
    stride: IntOrPair = 1,
    padding=0,
    groups: int = 1,
    **kwargs,
) -> nn.Module:
    """Build the dynamic conv `kind` ("od", "condconv", "dyconv" or "fd"); `kwargs` are that layer's own arguments
    (e.g. kernel_num and reduction for "od", num_experts for "condconv")."""
    if kind not in DYNAMIC_CONVS:
        raise ValueError(f"Unknown dynamic conv kind {kind!r}, should be one of {list(DYNAMIC_CONVS)}")
    cls = DYNAMIC_CONVS[kind]
    accepted = [p for p in inspect.signature(cls).parameters if p not in ("in_channels", "out_channels", "kernel_size")]
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise ValueError(f"{cls.__name__} (kind {kind!r}) does not take {unknown}; it takes {accepted}")
    if kind == "fd":
        # The networks' convs have no bias (a norm follows); FDConv2d keeps nn.Conv2d's default (True), as released.
        kwargs.setdefault("bias", False)
    return cls(in_channels, out_channels, kernel_size, stride=stride, padding=padding, groups=groups, **kwargs)
