"""Mixup and CutMix of training batches (timm's `Mixup`), off in the paper recipe."""
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
