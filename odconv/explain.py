"""`explain(model, example)`: which formulation each ODConv call of a model uses, why, and the measured times."""
from __future__ import annotations

from typing import NamedTuple, Optional

import torch
from torch import nn

from .dispatch import recording
from .formulations import LayerShape
from .tuning import preserved_state


class ExplainRow(NamedTuple):
    layer: str  # qualified name of the module that called the functional core
    shape: LayerShape
    formulation: str
    reason: str  # "forced" (layer attribute or use_formulation), "measured", "rule" or "only" (per-sample kernel)
    times: Optional[dict[str, float]]  # ms per candidate formulation, when measured


def explain(model: nn.Module, example: torch.Tensor) -> list[ExplainRow]:
    """Run `model` once on `example` and return one row per ODConv call, in call order.

    The run is the one training (train mode: autograd on) or inference (eval mode: no grad) would make, so the
    rows show the choices of that run; in measured mode, keys not measured yet are measured now. The model's
    buffers, modes and the RNG are left unchanged.
    """
    stack: list[str] = []  # names of the modules running, innermost last

    def leave(mod, args, out) -> None:  # a forward hook's return value would replace the output
        stack.pop()
    hooks = []
    for name, m in model.named_modules():
        hooks.append(m.register_forward_pre_hook(lambda mod, args, name=name: stack.append(name)))
        hooks.append(m.register_forward_hook(leave))
    try:
        with recording(lambda: stack[-1] if stack else "") as calls, preserved_state(model, example.device), \
                torch.set_grad_enabled(model.training):
            model(example)
    finally:
        for h in hooks:
            h.remove()
    return [ExplainRow(name, shape, d.formulation, d.reason, d.times) for name, shape, d in calls]


def format_explain(rows: list[ExplainRow]) -> str:
    """`explain` as an aligned text table; measured rows list every candidate's time, fastest first."""
    lines = [f"{'layer':40s} {'B':>4s} {'Cin':>5s} {'Cout':>5s} {'HxW':>9s} {'k':>3s} {'s':>2s} {'g':>5s} "
             f"{'K':>2s}  {'formulation':11s} {'reason':8s} times (ms)"]
    for r in rows:
        s = r.shape
        maps = f"{s.height:4d}x{s.width:<4d}" if s.depth is None else f"{s.depth}x{s.height}x{s.width}".rjust(9)
        times = "" if not r.times else " ".join(f"{n}={t:.3g}" for n, t in sorted(r.times.items(), key=lambda i: i[1]))
        lines.append(f"{r.layer:40s} {s.batch:4d} {s.in_channels:5d} {s.out_channels:5d} {maps} "
                     f"{max(s.kernel_size):3d} {max(s.stride):2d} {s.groups:5d} {s.kernel_num:2d}  {r.formulation:11s} "
                     f"{r.reason:8s} {times}".rstrip())
    return "\n".join(lines)
