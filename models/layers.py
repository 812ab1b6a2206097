"""Conv factories that let one architecture definition serve the static network and every dynamic-conv variant.

The architectures never name a conv class: they call a `ConvFactory`, and the registry injects either
`static_conv` or a `DynamicConvFactory`, which builds its layers through `odconv.create_dynamic_conv` (ODConv,
CondConv, DyConv or DCD). `stage_convs` decides which of the four stages (output strides 4, 8, 16, 32) get the
dynamic conv.
"""
from __future__ import annotations

from typing import Any, Iterable, Protocol

from timm.layers import register_notrace_module
from torch import nn

from odconv import DCD_LAYERS, DYNAMIC_CONVS, DynamicConv2d, create_dynamic_conv

# timm's FX tracing (features_only with feature_cls="fx", torchvision's feature extraction, FX quantization) keeps
# these layers whole: their forward picks a formulation from the input's shape, which a symbolic trace cannot
# branch on. Registered by the zoo, so the layers themselves need no timm import.
for _cls in (*DYNAMIC_CONVS.values(), *DCD_LAYERS):
    register_notrace_module(_cls)

STAGES = (1, 2, 3, 4)  # output strides 4, 8, 16, 32


class ConvFactory(Protocol):
    def __call__(
        self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, groups: int = 1, *,
        device: Any = None, dtype: Any = None,
    ) -> nn.Module: ...


def static_conv(
    in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, groups: int = 1, *,
    device: Any = None, dtype: Any = None,
) -> nn.Module:
    return nn.Conv2d(
        in_channels, out_channels, kernel_size, stride, (kernel_size - 1) // 2, groups=groups, bias=False,
        device=device, dtype=dtype,
    )


class DynamicConvFactory:
    """Builds one kind of dynamic conv ("od", "condconv", "dyconv") with network-wide layer arguments, as the
    released models do (one `kernel_num` and `reduction` for every layer)."""

    def __init__(self, kind: str, **layer_kwargs: Any) -> None:
        if kind not in DYNAMIC_CONVS:
            raise ValueError(f"Unknown dynamic conv kind {kind!r}, should be one of {list(DYNAMIC_CONVS)}")
        self.kind = kind
        self.layer_kwargs = layer_kwargs

    def __call__(
        self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, groups: int = 1, *,
        device: Any = None, dtype: Any = None,
    ) -> nn.Module:
        return create_dynamic_conv(
            self.kind, in_channels, out_channels, kernel_size, stride, (kernel_size - 1) // 2, groups,
            device=device, dtype=dtype, **self.layer_kwargs,
        )

    def __repr__(self) -> str:
        args = "".join(f", {k}={v!r}" for k, v in self.layer_kwargs.items())
        return f"DynamicConvFactory({self.kind!r}{args})"


def check_dynamic_stages(dynamic_stages: Iterable[int]) -> tuple[int, ...]:
    """`dynamic_stages` as a sorted tuple, or a ValueError naming the argument and the allowed values."""
    try:
        if isinstance(dynamic_stages, str):
            raise TypeError
        stages = tuple(sorted(int(s) for s in dynamic_stages))
    except (TypeError, ValueError):
        raise ValueError(f"dynamic_stages must be a list of stage indices among {STAGES}, got {dynamic_stages!r}") from None
    if not stages or len(set(stages)) != len(stages) or any(s not in STAGES for s in stages):
        raise ValueError(
            f"dynamic_stages must be distinct stage indices among {STAGES} (strides 4, 8, 16, 32), at least one; "
            f"got {list(dynamic_stages)}"
        )
    return stages


def stage_convs(conv: ConvFactory, dynamic_stages: Iterable[int]) -> dict[int, ConvFactory]:
    """The conv factory of each stage (1..4): `conv` for the stages in `dynamic_stages`, `static_conv` otherwise."""
    stages = check_dynamic_stages(dynamic_stages)
    return {s: conv if s in stages else static_conv for s in STAGES}


def init_static_layers(model: nn.Module) -> None:
    """Initialise the network's static layers as the released models do; dynamic convs init themselves
    (their attention layers get the init their paper's code gives them)."""
    self_initialising = (DynamicConv2d, *DCD_LAYERS)
    inside_dynamic = {id(m) for d in model.modules() if isinstance(d, self_initialising) for m in d.modules()}
    for m in model.modules():
        if id(m) in inside_dynamic:
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
