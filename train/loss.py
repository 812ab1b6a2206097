"""The training loss: cross entropy, on the soft targets mixup makes when it is on."""
from __future__ import annotations

from timm.loss import SoftTargetCrossEntropy
from torch import nn


def build_criterion(*, mixup: bool = False, label_smoothing: float = 0.0) -> nn.Module:
    """Training loss: soft-target cross entropy after mixup (mixup already smoothed the targets), otherwise cross
    entropy with optional label smoothing (0 in the paper recipe). Evaluation uses plain cross entropy."""
    if not 0 <= label_smoothing < 1:
        raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
    if mixup:
        return SoftTargetCrossEntropy()
    return nn.CrossEntropyLoss(label_smoothing=label_smoothing)
