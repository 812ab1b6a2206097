"""The attention temperature: setting it on a model and the released annealing schedule."""
from __future__ import annotations

from torch import nn


def set_temperature(model: nn.Module, temperature: float) -> int:
    """Set the temperature of every dynamic conv in `model` that has one (ODConv, DyConv of any dimension;
    CondConv has none), or KernelWarehouse's tau (the weight of the initial assignment), which the same schedule
    drives from 1 to 0; returns how many layers were updated."""
    from .conv import DynamicConvNd
    from .kernelwarehouse import KWConvNd

    n = 0
    for m in model.modules():
        if isinstance(m, (DynamicConvNd, KWConvNd)) and hasattr(m, "update_temperature"):
            m.update_temperature(temperature)
            n += 1
    return n


def final_temperature(model: nn.Module) -> float:
    """The value a fully trained model runs at: tau 0 for KernelWarehouse, temperature 1 for the others."""
    from .kernelwarehouse import KWConvNd

    return 0.0 if any(isinstance(m, KWConvNd) for m in model.modules()) else 1.0


TEMPERATURE_SHAPES = ("linear", "reciprocal")


def temperature_schedule(
    iteration: int, iters_per_epoch: int, t0: float = 30.0, anneal_epochs: float = 10, t_end: float = 1.0,
    shape: str = "linear",
) -> float:
    """Annealing from `t0` to `t_end` over the first `anneal_epochs` epochs, then `t_end`.

    ``shape="linear"`` is the released schedule, linear in T (ODConv: 30 -> 1 over 10 epochs; KernelWarehouse's
    tau: 1 -> 0 over 20, 15 for MobileNetV2): ``T = t_end + max(0, (t0 - t_end) * (N - it) / N)``.
    ``shape="reciprocal"`` is linear in 1/T, the factor that scales the attention's logits: the attention sharpens
    at an even rate. Linear in T, 1/T covers three quarters of its range (30 -> 1: 0.25 -> 1) in the last tenth of
    the ramp, which ~50,000 ImageNet steps absorb and a short run does not (docs/training.md, the temperature).

    `iteration` is the global, 1-based index of the step about to run (both released scripts pass
    ``batch_idx + 1 + epoch * iters_per_epoch``).
    """
    if iters_per_epoch <= 0:
        raise ValueError(f"iters_per_epoch must be positive, got {iters_per_epoch}")
    if shape not in TEMPERATURE_SHAPES:
        raise ValueError(f"temperature shape must be one of {TEMPERATURE_SHAPES}, got {shape!r}")
    total = iters_per_epoch * anneal_epochs
    if total <= 0:
        return t_end
    left = max(0.0, (total - iteration) / total)  # 1 before the first step, 0 from the end of the ramp on
    if shape == "linear":
        return t_end + (t0 - t_end) * left
    if t_end <= 0:
        raise ValueError(f"a reciprocal temperature schedule needs t_end > 0, got {t_end}")
    return 1.0 / (1.0 / t_end + (1.0 / t0 - 1.0 / t_end) * left)
