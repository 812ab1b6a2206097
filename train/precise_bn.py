"""BatchNorm statistics for evaluation: recompute them on training batches (precise BN), or use each batch's own.

During training a BatchNorm layer keeps an exponential moving average (momentum 0.1) of its batch statistics, so
its running statistics describe roughly the last ten optimizer steps' networks, not the network being evaluated.
When the weights still move fast, as in a short run with per-sample kernels, eval mode then normalises with stale
statistics. `recalibrate_bn` replaces them by the plain average of the batch statistics of the current network
over N training batches ("precise BN": Wu and Johnson, Rethinking "Batch" in BatchNorm, 2021; the PreciseBN hook
of fvcore/detectron2 and pycls). `batch_statistics` evaluates with each batch's own statistics instead (train-mode
BatchNorm, dropout off), the diagnostic that tells stale statistics from a network that has not learned.
"""
from __future__ import annotations

import contextlib
from typing import Iterable

import torch
from torch import nn

from odconv import ODAttention

from . import checkpoint as ckpt_lib


def _batchnorms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]


@torch.no_grad()
def recalibrate_bn(model: nn.Module, batches: Iterable, num_batches: int, device: torch.device, autocast) -> int:
    """Set every BatchNorm's running mean and variance to the average of its batch statistics over `num_batches`
    batches of `batches` (inputs first in each item), computed by `model` as it is now. Every BatchNorm layer is
    recalibrated, the attention branch's too where it has one (the released ODConv attention norm), since both
    see the same drift. Under DDP each rank uses its own batches and the averages are then averaged over ranks
    (every rank draws the same number of batches, so this is the average over all of them). The RNG states
    (dropout) and the model's train/eval modes are left as they were. Returns the number of batches used."""
    bns = _batchnorms(model)
    if not bns or num_batches <= 0:
        return 0
    momenta = [bn.momentum for bn in bns]
    modes = {m: m.training for m in model.modules()}
    rng = ckpt_lib.rng_state()
    used = 0
    try:
        for bn in bns:
            bn.reset_running_stats()
            bn.momentum = None  # cumulative average: every batch weighs the same
        model.train()
        for batch in batches:
            if used >= num_batches:
                break
            if batch is None:  # every image of the batch was unreadable
                continue
            with autocast():
                model(batch[0].to(device, non_blocking=True))
            used += 1
    finally:
        for bn, momentum in zip(bns, momenta):
            bn.momentum = momentum
        for m, training in modes.items():
            m.training = training
        ckpt_lib.set_rng_state(rng)
    # A rank that ran out of batches contributes nothing; the others' averages are weighted by their counts.
    flat = torch.cat([torch.cat([bn.running_mean, bn.running_var]).double() * used for bn in bns] +
                     [torch.tensor([float(used)], dtype=torch.float64, device=bns[0].running_mean.device)])
    if torch.distributed.is_initialized():
        torch.distributed.all_reduce(flat)
    total = flat[-1].item()
    if total == 0:
        raise ValueError("trainer.precise_bn_batches: the training loader yielded no batch to recalibrate on")
    offset = 0
    for bn in bns:
        n = bn.running_mean.numel()
        bn.running_mean.copy_(flat[offset:offset + n] / total)
        bn.running_var.copy_(flat[offset + n:offset + 2 * n] / total)
        bn.num_batches_tracked.fill_(int(total))
        offset += 2 * n
    return used


@contextlib.contextmanager
def batch_statistics(model: nn.Module):
    """Inside: the model in eval mode except its BatchNorm layers, which normalise with each batch's own
    statistics (the ODConv attention's BatchNorm too). Their running statistics are restored on exit, so this
    measures without changing anything."""
    bns = _batchnorms(model)
    saved = [(bn.running_mean.clone(), bn.running_var.clone(), bn.num_batches_tracked.clone()) for bn in bns]
    modes = {m: m.training for m in model.modules()}
    model.eval()
    for bn in bns:
        bn.train()
    for m in model.modules():  # its eval mode would fold the running statistics of its BatchNorm into the squeeze
        if isinstance(m, ODAttention) and m.bn is not None:
            m.train()
    try:
        yield model
    finally:
        with torch.no_grad():
            for bn, (mean, var, count) in zip(bns, saved):
                bn.running_mean.copy_(mean)
                bn.running_var.copy_(var)
                bn.num_batches_tracked.copy_(count)
        for m, training in modes.items():
            m.training = training
