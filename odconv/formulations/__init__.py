"""The ways of computing one ODConv layer, as a registry: name -> `Formulation(name, fn, can_compute)`.

All give the same result; they differ in speed and memory per shape. For sample b, with channel attention a_c
(C_in), filter a_f (C_out), spatial a_s (kh, kw), kernel a_k (K): ``y[b] = conv(x[b], W[b])`` with
``W[b] = a_f[b] * a_c[b] * a_s[b] * sum_i a_k[b, i] W_i`` (outer product over the kernel's four dimensions).
A missing attention (None) is 1. Each module's docstring says how it computes this and where it wins:

- ``grouped`` (the released code), ``folded`` and ``bmm``: a per-sample kernel, through a grouped conv over the
  batch or a batched GEMM.
- ``feature``, ``columns``, ``taps``: no per-sample kernel; one GEMM shared by the batch, the attentions on the
  feature maps, the unfolded input or the shifted tap outputs.
- ``single``: batch 1 only; every attention folded into the one sample's kernel, then a static conv.

1-D layers run as 2-D calls over a (1, L) map. 3-D calls (``LayerShape.depth`` set) are computed by ``grouped``,
``folded`` and ``single``, written over any number of spatial dimensions; the others' ``can_compute`` rejects them.

Adding a formulation: one module defining ``FORMULATION`` (every function takes ``(x, weight, channel, filt,
spatial, kernel, stride, padding, dilation, groups)`` and returns the output without bias), and one line below.
"""
from __future__ import annotations

from . import bmm, columns, feature, folded, grouped, single, taps
from .common import Formulation, LayerShape

REGISTRY: dict[str, Formulation] = {f.name: f for f in (
    grouped.FORMULATION,
    folded.FORMULATION,
    bmm.FORMULATION,
    feature.FORMULATION,
    columns.FORMULATION,
    taps.FORMULATION,
    single.FORMULATION,
)}
FORMULATIONS = tuple(REGISTRY)


def get(name: str) -> Formulation:
    """The registry entry `name`; a clear error for an unknown one."""
    entry = REGISTRY.get(name)
    if entry is None:
        raise ValueError(f"Unknown ODConv formulation {name!r}, should be one of {list(FORMULATIONS)}")
    return entry


def candidates(shape: LayerShape) -> list[str]:
    """Every formulation that can compute a layer of this shape, in registry order."""
    return [f.name for f in REGISTRY.values() if f.can_compute(shape)]


def supported(name: str, groups: int, has_spatial: bool) -> bool:
    """Whether formulation `name` can compute a layer with these groups and spatial attention (the two
    properties today's entries look at; scripts that enumerate shapes use it)."""
    shape = LayerShape(2, groups, groups, 1, 1, (1, 1), (1, 1), groups, 1, has_spatial)
    return name in REGISTRY and REGISTRY[name].can_compute(shape)


__all__ = ["FORMULATIONS", "Formulation", "LayerShape", "REGISTRY", "candidates", "get", "supported"]
