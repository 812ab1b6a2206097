"""`create_dynamic_conv`: the one place that maps a dynamic-convolution kind to its layer (the zoo injects it)."""
from __future__ import annotations

import inspect

from torch import nn

from .condconv import CondConv1d, CondConv2d, CondConv3d
from .conv import DynamicConvNd, IntOrPair, ODConv1d, ODConv2d, ODConv3d
from .dcd import DCDConv2d
from .dyconv import DyConv1d, DyConv2d, DyConv3d
from .fdconv import FDConv2d
from .kernelwarehouse import KWConv1d, KWConv2d, KWConv3d

# "kw" builds a KernelWarehouse conv without cells: a WarehouseManager must register it (odconv/warehouse.py).
# "dcd" is the low-rank member: a static conv plus a dynamic 1x1 residual (odconv/dcd.py), not a kernel mixture,
# so it is no DynamicConv2d; the zoo builds it through the same factory.
DYNAMIC_CONVS: dict[str, type[nn.Module]] = {"od": ODConv2d, "condconv": CondConv2d, "dyconv": DyConv2d,
                                             "kw": KWConv2d, "dcd": DCDConv2d, "fd": FDConv2d}
# The kinds in one and three spatial dimensions (`create_dynamic_conv(..., dims=1 or 3)`); the zoo is 2-D.
DYNAMIC_CONVS_1D: dict[str, type[nn.Module]] = {"od": ODConv1d, "condconv": CondConv1d, "dyconv": DyConv1d,
                                                "kw": KWConv1d}
DYNAMIC_CONVS_3D: dict[str, type[nn.Module]] = {"od": ODConv3d, "condconv": CondConv3d, "dyconv": DyConv3d,
                                                "kw": KWConv3d}


def create_dynamic_conv(
    kind: str,
    in_channels: int,
    out_channels: int,
    kernel_size: IntOrPair,
    stride: IntOrPair = 1,
    padding=0,
    groups: int = 1,
    dims: int = 2,
    **kwargs,
) -> nn.Module:
    """Build the dynamic conv `kind` ("od", "condconv", "dyconv", "kw"; "dcd" and "fd" in 2-D only) over `dims`
    spatial dimensions (1, 2 or 3); `kwargs` are that layer's own arguments (e.g. kernel_num and reduction for
    "od", num_experts for "condconv", pool_size and fc_squeeze for "dcd"). A "kw" layer has none: its cells and
    attention come from the WarehouseManager that registers it."""
    kinds = {1: DYNAMIC_CONVS_1D, 2: DYNAMIC_CONVS, 3: DYNAMIC_CONVS_3D}.get(dims)
    if kinds is None:
        raise ValueError(f"dims must be 1, 2 or 3, got {dims!r}")
    if kind not in kinds:
        raise ValueError(f"Unknown dynamic conv kind {kind!r} in {dims}-D, should be one of {list(kinds)}")
    cls = kinds[kind]
    accepted = [p for p in inspect.signature(cls).parameters if p not in ("in_channels", "out_channels", "kernel_size")]
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise ValueError(f"{cls.__name__} (kind {kind!r}) does not take {unknown}; it takes {accepted}")
    if kind == "fd":
        # The networks' convs have no bias (a norm follows); FDConv2d keeps nn.Conv2d's default (True), as released.
        kwargs.setdefault("bias", False)
    return cls(in_channels, out_channels, kernel_size, stride=stride, padding=padding, groups=groups, **kwargs)
