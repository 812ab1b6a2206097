"""Which formulation computes an ODConv layer: the rules, a way to force one, and a per-layer report.

Rules (measured on 2 CPU cores, torch 2.14.1, see BENCHMARKS.md "ODConv operator and models"; forward+backward
over the zoo's layer shapes at 224px batch 16 and 32px batch 64):
RULES_DOC
"""
from __future__ import annotations

import contextlib
from typing import Iterator, NamedTuple, Optional

import torch
from torch import nn

from .formulations import FORMULATIONS, supported

_forced: list[str] = []


class LayerShape(NamedTuple):
    batch: int
    in_channels: int
    out_channels: int
    height: int
    width: int
    kernel_size: tuple[int, int]
    stride: tuple[int, int]
    groups: int
    kernel_num: int
    has_spatial: bool


def choose(shape: LayerShape, device_type: str = "cpu", training: bool = True) -> str:
    """The formulation the rules pick for one layer call (plain Python on shapes: no graph break)."""
    depthwise = shape.groups == shape.in_channels and shape.groups > 1
    if not shape.has_spatial and shape.kernel_num == 1:
        # 1x1 single kernel: the static conv between two elementwise scalings, no per-sample kernel.
        return "feature"
    if shape.groups != 1:
        # Depthwise: the per-sample kernel is tiny (B*C*kh*kw) and the grouped conv is an ordinary depthwise
        # conv over B*C channels; folding all attentions into it saves two passes over the feature maps.
        return "folded" if depthwise else "grouped"
    return "columns"


def _current_forced() -> Optional[str]:
    return _forced[-1] if _forced else None


@contextlib.contextmanager
def use_formulation(name: str) -> Iterator[None]:
    """Force formulation `name` for every ODConv layer called inside the block (a layer's own
    `formulation` attribute still wins). Layers the formulation cannot compute fall back to the rules."""
    if name not in FORMULATIONS:
        raise ValueError(f"Unknown ODConv formulation {name!r}, should be one of {list(FORMULATIONS)}")
    _forced.append(name)
    try:
        yield
    finally:
        _forced.pop()


def resolve(layer_choice: Optional[str], shape: LayerShape, device_type: str, training: bool) -> str:
    """The formulation a layer call uses: the layer's attribute, else `use_formulation`, else the rules."""
    for name in (layer_choice, _current_forced()):
        if name is not None and supported(name, shape.groups, shape.has_spatial):
            return name
    return choose(shape, device_type, training)


def explain(model: nn.Module, example: torch.Tensor) -> list[tuple[str, LayerShape, str]]:
    """Run `model` once on `example` (no grad, mode unchanged) and return, for each ODConv layer called,
    (qualified name, the shape it saw, the formulation it used)."""
    from .conv import ODConv2d

    rows: list[tuple[str, LayerShape, str]] = []
    hooks = []
    for name, m in model.named_modules():
        if isinstance(m, ODConv2d):
            def hook(mod, args, name=name):
                shape = mod.layer_shape(args[0])
                rows.append((name, shape, resolve(mod.formulation, shape, args[0].device.type, mod.training)))
            hooks.append(m.register_forward_pre_hook(hook))
    try:
        with torch.no_grad():
            model(example)
    finally:
        for h in hooks:
            h.remove()
    return rows


def format_explain(rows: list[tuple[str, LayerShape, str]]) -> str:
    """`explain` as an aligned text table."""
    lines = [f"{'layer':40s} {'B':>4s} {'Cin':>5s} {'Cout':>5s} {'HxW':>9s} {'k':>3s} {'s':>2s} {'g':>5s} "
             f"{'K':>2s}  formulation"]
    for name, s, f in rows:
        lines.append(f"{name:40s} {s.batch:4d} {s.in_channels:5d} {s.out_channels:5d} {s.height:4d}x{s.width:<4d} "
                     f"{s.kernel_size[0]:3d} {s.stride[0]:2d} {s.groups:5d} {s.kernel_num:2d}  {f}")
    return "\n".join(lines)
