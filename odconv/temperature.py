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


def temperature_schedule(
    iteration: int, iters_per_epoch: int, t0: float = 30.0, anneal_epochs: float = 10, t_end: float = 1.0
) -> float:
    """Released schedule: linear from `t0` to `t_end` over the first `anneal_epochs` epochs, then `t_end`
    (ODConv: 30 -> 1 over 10 epochs; KernelWarehouse's tau: 1 -> 0 over 20, 15 for MobileNetV2).

    `iteration` is the global, 1-based index of the step about to run (both released scripts pass
    ``batch_idx + 1 + epoch * iters_per_epoch``): ``T = t_end + max(0, (t0 - t_end) * (N - it) / N)``.
    """
    if iters_per_epoch <= 0:
        raise ValueError(f"iters_per_epoch must be positive, got {iters_per_epoch}")
    total = iters_per_epoch * anneal_epochs
    if total <= 0:
        return t_end
    return t_end + max(0.0, (t0 - t_end) * (total - iteration) / total)
