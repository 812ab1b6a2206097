"""Which formulation computes an ODConv layer: the rules, a way to force one, and a per-layer report.

Rules, from forward and forward+backward timings of the zoo's layer shapes (224px batch 16, 32px batch 64) on this
project's 2-core CPU machine, torch 2.14.1 (BENCHMARKS.md, "ODConv operator and models"):

- depthwise: ``folded`` (the grouped conv over B*C channels is an ordinary depthwise conv; same time as released,
  no per-sample kernel kept for backward); other grouped convs: ``grouped``.
- batch 1: ``grouped``, the released formulation, which is then a static conv with a kernel built from one pass
  over O*C*kh*kw (measured: od_resnet50 eval at batch 1, folded 0.16 s, grouped 0.13 s, static 0.10 s).
- 1x1: ``bmm`` from 56x56 up (one batched GEMM, all attentions inside the per-sample kernel); at 28x28 with
  K > 1, ``folded`` for weights of 128x128 and up, else ``bmm``; below (and at 28x28 with K = 1) ``feature``
  (the static conv between two scalings) for K = 1 or where the per-sample kernel is 4x the feature maps
  (K > 1: the K stacked kernels cost K times the MACs), else ``grouped``.
- kh x kw, K = 1, stride 1, below 28x28 outputs: ``taps`` (one GEMM shared by the batch, the static conv's MACs,
  the attentions weight kh*kw shifted additions; taps that only see padding are skipped).
- other kh x kw: ``columns`` where out_channels >= 4 * output pixels (the per-sample kernel dwarfs the feature
  maps, and the grouped conv's B tiny convolutions are slowest: released is 10-300x the static conv there),
  else ``folded`` from 28x28 outputs up, ``grouped`` between.
- CUDA/other devices: ``taps`` where the CPU uses it, ``columns`` where out_channels >= 4 * output pixels, else
  ``bmm`` (the GPU plan; not measured yet).
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


# Thresholds of the CPU rules, from the layer table in BENCHMARKS.md. Pixels are per sample.
LARGE_PIXELS = 784  # from 28x28 outputs up, oneDNN's grouped conv with the folded kernel is within ~1.2-1.5x of static
POINTWISE_BMM_PIXELS = 3136  # 1x1: the batched GEMM beats the static (NCHW) conv from 56x56 up
FOLDED_POINTWISE_WEIGHTS = 128 * 128  # 1x1, K > 1, 28x28: folded wins from 128x128 weights up (bmm below)
FEATURE_KERNEL_RATIO = 4  # 1x1, K > 1: stacked kernels win once O*C >= 4 * (C + O) * pixels
COLUMNS_CHANNEL_RATIO = 4  # the shared GEMM wins once the per-sample kernel (O*C*kh*kw) dwarfs the input (C*H*W)


def choose(shape: LayerShape, device_type: str = "cpu", training: bool = True) -> str:
    """The formulation the rules pick for one layer call (plain Python on shapes: no graph break)."""
    kh, kw = shape.kernel_size
    (sh, sw) = shape.stride
    pixels_in = shape.height * shape.width
    pixels_out = ((shape.height - 1) // sh + 1) * ((shape.width - 1) // sw + 1)  # 'same'-padded output
    depthwise = shape.groups == shape.in_channels and shape.groups > 1
    pointwise = (kh, kw) == (1, 1) and (sh, sw) == (1, 1)
    if depthwise:
        # The per-sample kernel is tiny (B*C*kh*kw) and the grouped conv is an ordinary depthwise conv over B*C
        # channels; folding every attention into it saves two passes over the feature maps and their memory.
        return "folded"
    if shape.groups != 1:
        return "grouped"
    if shape.batch == 1:
        # One sample: the grouped conv is a plain static conv. Folding a_c and a_f into the kernel as well costs
        # more than scaling the small feature maps (3 passes over O*C*kh*kw vs a conv of O*C*kh*kw*H*W MACs).
        return "grouped"
    small = shape.out_channels >= COLUMNS_CHANNEL_RATIO * pixels_out
    taps = shape.has_spatial and shape.kernel_num == 1 and (sh, sw) == (1, 1) and pixels_out < LARGE_PIXELS
    if device_type != "cpu":
        # GPU plan (BENCHMARKS.md, unmeasured): cuDNN's grouped conv is slow for groups = B, GEMMs shared by the
        # batch (taps, columns) or batched (cuBLAS) are not, and shifting or unfolding costs bandwidth a GPU has.
        return "taps" if taps else "columns" if small else "bmm"
    if pointwise:
        if pixels_in >= POINTWISE_BMM_PIXELS:
            # Large maps: one batched GEMM, all attentions in the per-sample kernel, no elementwise passes.
            return "bmm"
        if pixels_in >= LARGE_PIXELS and shape.kernel_num > 1:
            # 28x28 with K kernels: the folded per-sample kernel through oneDNN's grouped conv for wide layers,
            # the batched GEMM for narrow ones (MobileNetV2's 32-192 channels).
            return "folded" if shape.in_channels * shape.out_channels >= FOLDED_POINTWISE_WEIGHTS else "bmm"
        kernel_size = shape.in_channels * shape.out_channels
        maps_size = (shape.in_channels + shape.out_channels) * pixels_in
        if shape.kernel_num == 1 or kernel_size >= FEATURE_KERNEL_RATIO * maps_size:
            # The static conv between two scalings; for K > 1 the K stacked kernels (K times the MACs) only pay
            # where the per-sample kernel would dwarf the feature maps.
            return "feature"
        return "grouped"
    if taps:
        # One shared GEMM with the static conv's MACs, the attentions only weight kh*kw shifted additions.
        return "taps"
    if small and shape.has_spatial:
        return "columns"
    return "folded" if pixels_out >= LARGE_PIXELS else "grouped"


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
    """The formulation a layer call uses: the layer's attribute, else `use_formulation`, else the rules.

    A forced formulation that cannot compute the layer (e.g. "columns" on a depthwise conv) falls back to the
    rules, so one setting can be applied to a whole model; `explain` shows what each layer ended up with.
    """
    if layer_choice is not None and layer_choice not in FORMULATIONS:
        raise ValueError(f"Unknown ODConv formulation {layer_choice!r}, should be one of {list(FORMULATIONS)} or None")
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
