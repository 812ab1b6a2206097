"""The attention temperature: setting it on a model and the released annealing schedule."""
from __future__ import annotations

from torch import nn


def set_temperature(model: nn.Module, temperature: float) -> int:
    """Set the temperature of every dynamic conv in `model` that has one (ODConv, DyConv of any dimension;
    CondConv has none); returns how many layers were updated."""
    from .conv import DynamicConvNd

    n = 0
    for m in model.modules():
        if isinstance(m, DynamicConvNd) and hasattr(m, "update_temperature"):
            m.update_temperature(temperature)
            n += 1
    return n


def temperature_schedule(
    iteration: int, iters_per_epoch: int, t0: float = 30.0, anneal_epochs: float = 10
) -> float:
    """Released schedule: linear from `t0` to 1 over the first `anneal_epochs` epochs, then 1.

    `iteration` is the global, 1-based index of the step about to run (the released script passes
    ``batch_idx + 1 + epoch * iters_per_epoch``): ``T = 1 + max(0, (t0 - 1) * (N - it) / N)``.
    """
    if iters_per_epoch <= 0:
        raise ValueError(f"iters_per_epoch must be positive, got {iters_per_epoch}")
    total = iters_per_epoch * anneal_epochs
    if total <= 0:
        return 1.0
    return 1.0 + max(0.0, (t0 - 1.0) * (total - iteration) / total)
