"""Mixup and CutMix of training batches (timm's `Mixup`), off in the paper recipe; the DCD recipe's mixup ramp."""
from __future__ import annotations

from timm.data import Mixup


def build_mixup(num_classes: int, *, mixup_alpha: float = 0.0, cutmix_alpha: float = 0.0, prob: float = 1.0,
                switch_prob: float = 0.5, mode: str = "batch", label_smoothing: float = 0.0):
    """timm's Mixup (applied to each batch in the loop, which then needs `build_criterion(mixup=True)`), or None when
    both alphas are 0, the paper recipe. In "batch" mode the per-rank batch size must be even."""
    if mixup_alpha < 0 or cutmix_alpha < 0:
        raise ValueError(f"mixup_alpha and cutmix_alpha must be >= 0, got {mixup_alpha} and {cutmix_alpha}")
    if mixup_alpha == 0 and cutmix_alpha == 0:
        return None
    return Mixup(mixup_alpha=mixup_alpha, cutmix_alpha=cutmix_alpha, prob=prob, switch_prob=switch_prob, mode=mode,
                 label_smoothing=label_smoothing, num_classes=num_classes)


def ramp_mixup(mixup, alpha: float, epoch: int, ramp_epochs: float) -> float:
    """Set the mixup alpha of `epoch` (0-based) on timm's `Mixup` and return it: `alpha` x epoch / ramp_epochs
    until `ramp_epochs`, then `alpha`, as the released DCD script (alpha x epoch / 100 over its first 100 epochs);
    `ramp_epochs` 0 keeps `alpha` throughout. An alpha of 0 mixes nothing (the targets are still smoothed)."""
    value = alpha if ramp_epochs <= 0 else alpha * min(1.0, epoch / ramp_epochs)
    mixup.mixup_alpha = value
    mixup.mixup_enabled = value > 0 or mixup.cutmix_alpha > 0  # timm refuses a batch with no alpha at all
    return value
