"""Optimizer and lr schedule from the config (timm schedulers, stepped by epoch or by optimizer step)."""
from __future__ import annotations

import torch
from timm.optim import param_groups_weight_decay
from timm.scheduler import create_scheduler_v2
from torch import nn

from .config import TrainConfig, lr_for


def param_groups(model: nn.Module, weight_decay: float, exclude_norm_bias: bool) -> list[dict]:
    """With `exclude_norm_bias`, 1-D parameters (norm scales and shifts, biases) get no weight decay (timm's
    grouping, in its order: the no-decay group first). ODConv's attention BatchNorm falls in that set as well; its
    fc/conv weights keep decay."""
    if not exclude_norm_bias:
        return [{"params": [p for p in model.parameters() if p.requires_grad], "weight_decay": weight_decay}]
    return param_groups_weight_decay(model, weight_decay)


def build_optimizer(model: nn.Module, c: TrainConfig) -> torch.optim.Optimizer:
    o = c.optim
    groups = param_groups(model, o.weight_decay, o.wd_exclude_norm_bias)
    lr = lr_for(c)
    if o.name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=o.momentum, nesterov=o.nesterov)
    return torch.optim.AdamW(groups, lr=lr)


def build_scheduler(optimizer: torch.optim.Optimizer, c: TrainConfig, steps_per_epoch: int):
    """A timm scheduler; the loop calls `step(epoch)` at each epoch start and `step_update(step)` after each
    optimizer step, and whichever of the two the schedule does not use is a no-op. Both are pure functions of
    their argument, so resuming only needs the position."""
    s = c.sched
    sched, _ = create_scheduler_v2(
        optimizer,
        sched="multistep" if s.name == "multistep" else s.name,
        num_epochs=c.trainer.epochs,
        decay_milestones=list(s.milestones),
        decay_rate=s.decay_rate,
        min_lr=s.min_lr,
        warmup_epochs=s.warmup_epochs,
        warmup_lr=s.warmup_lr,
        step_on_epochs=not s.per_iteration,
        updates_per_epoch=steps_per_epoch,
    )
    return sched


def set_schedule_position(sched, epoch: int, step: int) -> None:
    if sched is not None:
        sched.step(epoch)
        sched.step_update(step)
