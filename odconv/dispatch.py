"""Which formulation computes an ODConv call: forcing, the measured choice, or the rules.

Order: a layer's own `formulation` attribute, then `use_formulation`, then (mode "measured", or "auto" on CUDA)
the fastest formulation timed on this device for this call's key (odconv/tuning.py), then the rules below. A
forced formulation that cannot compute a call is an error, never a silent fallback.
`set_dispatch(mode)` picks the mode; "auto" (the default) measures on CUDA and uses the rules on CPU, where the
rules were derived. Everything here is plain Python on shapes, so it traces under torch.compile/export.

Rules, from forward and forward+backward timings of the zoo's layer shapes (224px batch 16, 32px batch 64) on this
project's 2-core CPU machine, torch 2.14.1 (BENCHMARKS.md, "ODConv operator and models"):

- depthwise: ``folded`` (the grouped conv over B*C channels is an ordinary depthwise conv; same time as released,
  no per-sample kernel kept for backward); other grouped convs: ``grouped``.
- batch 1, inference, kernel no larger than the maps (any device, before the rules below): ``single``, every
  attention folded into the one kernel, then a static conv.
- batch 1 otherwise: ``grouped``, the released formulation, which is then a static conv with a kernel built from
  one pass over O*C*kh*kw (measured: od_resnet50 eval at batch 1, folded 0.16 s, grouped 0.13 s, static 0.10 s).
- 1x1: ``bmm`` from 56x56 up (one batched GEMM, all attentions inside the per-sample kernel); at 28x28 with
  K > 1, ``folded`` for weights of 128x128 and up, else ``bmm``; below (and at 28x28 with K = 1) ``feature``
  (the static conv between two scalings) for K = 1 or where the per-sample kernel is 4x the feature maps
  (K > 1: the K stacked kernels cost K times the MACs), else ``grouped``.
- kh x kw, K = 1, stride 1, below 28x28 outputs: ``taps`` (one GEMM shared by the batch, the static conv's MACs,
  the attentions weight kh*kw shifted additions; taps that only see padding are skipped); also any K, with or
  without spatial attention, on a 1x1 map, where only the centre tap sees data.
- other kh x kw: ``columns`` where out_channels >= 4 * output pixels (the per-sample kernel dwarfs the feature
  maps, and the grouped conv's B tiny convolutions are slowest: released is 10-300x the static conv there),
  else ``folded`` from 28x28 outputs up, ``grouped`` between.
- CUDA/other devices: ``taps`` where the CPU uses it, ``columns`` where out_channels >= 4 * output pixels, else
  ``bmm`` (the GPU plan; not measured yet).
- 3-D calls (any device; not measured): ``single`` for batch-1 inference, ``folded`` for depthwise layers (as in
  2-D), else ``grouped``, the released formulation; only these three compute 3-D calls. 1-D layers run as 2-D
  calls over a (1, L) map and follow the 2-D rules.
"""
from __future__ import annotations

import contextlib
import math
from typing import Callable, Iterator, NamedTuple, Optional

import torch

from . import tuning
from .formulations import FORMULATIONS, LayerShape, candidates, get

__all__ = ["Decision", "LayerShape", "MODES", "choose", "decide", "describe", "get_dispatch", "measures", "recording",
           "select", "select_per_sample", "set_dispatch", "use_formulation"]

MODES = ("rules", "measured", "auto")
_mode = "auto"
_forced: list[str] = []
_recorders: list[tuple[list, Callable[[], str]]] = []


class Decision(NamedTuple):
    """What a call uses and why: reason is "forced", "measured" or "rule"; times (ms per formulation) when measured."""

    formulation: str
    reason: str
    times: Optional[dict[str, float]] = None


def set_dispatch(mode: str) -> str:
    """How ODConv picks a formulation when none is forced: "rules", "measured" (time every candidate on the
    first call of each distinct layer call, keep the fastest; odconv/tuning.py) or "auto" (measured on CUDA,
    rules elsewhere; the default). Returns the previous mode."""
    global _mode
    if mode not in MODES:
        raise ValueError(f"Unknown ODConv dispatch mode {mode!r}, should be one of {list(MODES)}")
    previous, _mode = _mode, mode
    return previous


def get_dispatch() -> str:
    return _mode


def measures(device_type: str) -> bool:
    """Whether calls on `device_type` use the measured choice under the current mode."""
    return _mode == "measured" or (_mode == "auto" and device_type == "cuda")


# Thresholds of the CPU rules, from the layer table in BENCHMARKS.md. Pixels are per sample.
LARGE_PIXELS = 784  # from 28x28 outputs up, oneDNN's grouped conv with the folded kernel is within ~1.2-1.5x of static
POINTWISE_BMM_PIXELS = 3136  # 1x1: the batched GEMM beats the static (NCHW) conv from 56x56 up
FOLDED_POINTWISE_WEIGHTS = 128 * 128  # 1x1, K > 1, 28x28: folded wins from 128x128 weights up (bmm below)
FEATURE_KERNEL_RATIO = 4  # 1x1, K > 1: stacked kernels win once O*C >= 4 * (C + O) * pixels
COLUMNS_CHANNEL_RATIO = 4  # the shared GEMM wins once the per-sample kernel (O*C*kh*kw) dwarfs the input (C*H*W)


def _kernel_is_smaller(shape: LayerShape, pixels_in: int) -> bool:
    """Whether one sample's kernel (O * C/g * kh * kw) has no more elements than its input and output maps."""
    kernel = shape.out_channels * (shape.in_channels // shape.groups) * math.prod(shape.kernel_size)
    return kernel <= (shape.in_channels + shape.out_channels // math.prod(shape.stride)) * pixels_in


def _choose_3d(shape: LayerShape, training: bool) -> str:
    """The rules for a 3-D call: the formulations that compute one, picked as their 2-D counterparts are."""
    if shape.batch == 1 and not training and _kernel_is_smaller(shape, shape.depth * shape.height * shape.width):
        return "single"
    if shape.groups == shape.in_channels and shape.groups > 1:
        return "folded"
    return "grouped"


def choose(shape: LayerShape, device_type: str = "cpu", training: bool = True) -> str:
    """The formulation the rules pick for one layer call (plain Python on shapes: no graph break)."""
    if shape.depth is not None:
        return _choose_3d(shape, training)
    kh, kw = shape.kernel_size
    (sh, sw) = shape.stride
    pixels_in = shape.height * shape.width
    pixels_out = ((shape.height - 1) // sh + 1) * ((shape.width - 1) // sw + 1)  # 'same'-padded output
    depthwise = shape.groups == shape.in_channels and shape.groups > 1
    pointwise = (kh, kw) == (1, 1) and (sh, sw) == (1, 1)
    if shape.batch == 1 and not training and _kernel_is_smaller(shape, pixels_in):
        # One sample, inference: the kernel with every attention folded in, then one static conv; scaling the
        # maps by a_c and a_f instead costs two passes over them, more than one over the smaller kernel.
        return "single"
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
    # On a 1x1 map only the centre tap of a same-padded kernel sees data: `taps` is then one GEMM of K times the
    # static conv's MACs and K additions, for any K, with or without a spatial attention (CondConv 8x at ResNet18's
    # 32px stage 4: taps 0.8x the static conv, columns 4.8x; scripts/bench_kernel_only.py).
    centre_only = pixels_in == 1 and (kh, kw) != (1, 1)
    taps = (sh, sw) == (1, 1) and pixels_out < LARGE_PIXELS and (
        (shape.has_spatial and shape.kernel_num == 1) or centre_only)
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
    if small:
        # Also without a spatial attention (CondConv, DyConv, ablations): at 32px ResNet18's 1x1 maps the grouped
        # conv costs 30x columns (scripts/bench_kernel_only.py, BENCHMARKS.md).
        return "columns"
    return "folded" if pixels_out >= LARGE_PIXELS else "grouped"


def describe(shape: LayerShape) -> str:
    """A layer call in words, for error messages: 'a 3x3 conv 16->32 (groups 4, K 4, spatial attention) on a batch
    of 2 at 9x9'; a 3-D call's sizes have three factors)."""
    def sizes(t) -> str:
        return "x".join(str(n) for n in t)
    extras = [f"stride {sizes(shape.stride)}"] if any(s != 1 for s in shape.stride) else []
    extras += [f"groups {shape.groups}"] if shape.groups != 1 else []
    extras += [f"K {shape.kernel_num}", "spatial attention" if shape.has_spatial else "no spatial attention"]
    maps = (shape.height, shape.width) if shape.depth is None else (shape.depth, shape.height, shape.width)
    return (f"a {sizes(shape.kernel_size)} conv {shape.in_channels}->{shape.out_channels} ({', '.join(extras)}) on "
            f"a batch of {shape.batch} at {sizes(maps)}")


def _current_forced() -> Optional[str]:
    return _forced[-1] if _forced else None


@contextlib.contextmanager
def use_formulation(name: str) -> Iterator[None]:
    """Force formulation `name` for every ODConv call inside the block (a layer's own `formulation` attribute
    still wins). A call the formulation cannot compute raises a ValueError naming both: a forced formulation
    never silently becomes another one."""
    get(name)  # a clear error for an unknown name
    _forced.append(name)
    try:
        yield
    finally:
        _forced.pop()


def _backward(tensors) -> bool:
    """Whether autograd records this call (the key's train/eval: forward + backward, or forward only). An
    exported program is for inference: it takes the inference choice even though export traces with grad on."""
    if torch.compiler.is_exporting():
        return False
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def decide(layer_choice: Optional[str], x, weight, channel, filt, spatial, kernel, stride, padding, dilation,
           groups: int) -> Decision:
    """The formulation one call of the functional core uses, and why."""
    shape = LayerShape.of_call(x, weight, channel, filt, spatial, kernel, stride, groups)
    forced = layer_choice if layer_choice is not None else _current_forced()
    if forced is not None:
        if not get(forced).can_compute(shape):
            # Falling back would run (and time, and test) another formulation under this one's name.
            raise ValueError(f"ODConv formulation {forced!r} cannot compute {describe(shape)}; "
                             f"formulations that can: {candidates(shape)}")
        return Decision(forced, "forced")
    backward = _backward((x, weight, channel, filt, spatial, kernel))
    if measures(x.device.type) or tuning.measuring():
        key = tuning.call_key(shape, x, padding, dilation, backward)
        choice = tuning.lookup(x.device, key)
        rule = choose(shape, x.device.type, backward)
        if choice is None and tuning.may_measure():
            args = (x, weight, channel, filt, spatial, kernel, stride, padding, dilation, groups)
            names = [rule] + [n for n in candidates(shape) if n != rule]
            choice = tuning.measure(x.device, key, names, args, backward)
        if choice is not None and choice.formulation in FORMULATIONS and get(choice.formulation).can_compute(shape):
            return Decision(choice.formulation, "measured", choice.times)
        return Decision(rule, "rule")
    return Decision(choose(shape, x.device.type, backward), "rule")


def select(layer_choice: Optional[str], x, weight, channel, filt, spatial, kernel, stride, padding, dilation,
           groups: int) -> str:
    """`decide(...).formulation`; the one call layers make before the functional core."""
    d = decide(layer_choice, x, weight, channel, filt, spatial, kernel, stride, padding, dilation, groups)
    if _recorders:
        calls, label = _recorders[-1]
        calls.append((label(), LayerShape.of_call(x, weight, channel, filt, spatial, kernel, stride, groups), d))
    return d.formulation


# A ready per-sample kernel (KernelWarehouse) runs as grouped's conv over the batch (formulations.grouped.
# conv_per_sample) or, 1-D and 2-D with groups 1, as bmm's batched GEMM per sample and tap (formulations.bmm.
# conv_per_sample_taps), which the rule picks where the kernel dwarfs the maps: out_channels * taps >= this ratio
# times the output pixels. Measured per layer at batch 64 (forward + backward, 1 thread; BENCHMARKS.md): bmm 2.4-3.3x
# faster at 1x1-4x4 maps with 128-512 channels (ratio 72-4608) and at 128 channels 8x8 (18); the grouped conv
# faster at 64 channels 8x8 (9: 46 against 50 ms) and 16x16 (2.25: 61 against 210 ms).
PER_SAMPLE_FORMULATIONS = ("grouped", "bmm")
PER_SAMPLE_BMM_RATIO = 12


def per_sample_shape(x, weight_shape, stride, groups: int, cells: int) -> LayerShape:
    """The LayerShape of a call with a per-sample kernel of `weight_shape` (O, I/g, k...) on a 1-, 2- or 3-D input;
    kernel_num is the number of cells mixed into each part of the kernel (KernelWarehouse's warehouse size)."""
    spatial, kernel_size, stride = tuple(x.shape[2:]), tuple(weight_shape[2:]), tuple(stride)
    if len(spatial) == 1:  # 1-D: one row
        spatial, kernel_size, stride = (1, *spatial), (1, *kernel_size), (1, *stride)
    depth = spatial[0] if len(spatial) == 3 else None
    return LayerShape(x.shape[0], x.shape[1], weight_shape[0], spatial[-2], spatial[-1], kernel_size, stride,
                      groups, cells, False, False, False, depth)


def select_per_sample(layer_choice: Optional[str], x, weight_shape, stride, padding, dilation, groups: int,
                      cells: int) -> str:
    """The formulation of a layer that builds its own per-sample kernel (KernelWarehouse): ``grouped`` (any call)
    or ``bmm`` (1-D and 2-D, groups 1), forced or by the rule: ``bmm`` where out_channels * taps is at least
    PER_SAMPLE_BMM_RATIO times the output pixels per sample. Recorded for `explain` (reason "only" where one of them can compute the call); a forced
    formulation that cannot compute the call is an error, as for any call."""
    dims = x.dim() - 2
    can = [f for f in PER_SAMPLE_FORMULATIONS if f == "grouped" or (dims <= 2 and groups == 1)]
    forced = layer_choice if layer_choice is not None else _current_forced()
    shape = None
    if forced is not None and forced not in can:
        shape = per_sample_shape(x, weight_shape, stride, groups, cells)
        raise ValueError(f"ODConv formulation {forced!r} cannot compute {describe(shape)} with a per-sample kernel "
                         f"(KernelWarehouse); formulations that can: {can}")
    if forced is not None:
        decision = Decision(forced, "forced")
    elif len(can) == 1:
        decision = Decision(can[0], "only")
    else:
        pixels = math.prod((n + 2 * p - d * (k - 1) - 1) // s + 1 for n, k, s, p, d in
                           zip(x.shape[2:], weight_shape[2:], stride, padding, dilation))
        kernel_per_pixel = weight_shape[0] * math.prod(weight_shape[2:])
        decision = Decision("bmm" if kernel_per_pixel >= PER_SAMPLE_BMM_RATIO * pixels else "grouped", "rule")
    if _recorders:
        calls, label = _recorders[-1]
        calls.append((label(), shape or per_sample_shape(x, weight_shape, stride, groups, cells), decision))
    return decision.formulation


@contextlib.contextmanager
def recording(label: Callable[[], str] = str) -> Iterator[list[tuple[str, LayerShape, Decision]]]:
    """Collect (label(), shape, decision) for every `select` inside the block (what `odconv.explain` reports;
    `label` names the caller, e.g. the module running)."""
    calls: list[tuple[str, LayerShape, Decision]] = []
    _recorders.append((calls, label))
    try:
        yield calls
    finally:
        _recorders.pop()
