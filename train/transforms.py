"""Training and evaluation image transforms (timm's), with the paper recipe as the defaults."""
from __future__ import annotations

from typing import Callable

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, create_transform

INTERPOLATIONS = ("bilinear", "bicubic", "nearest", "lanczos", "random")


def build_transforms(img_size: int = 224, *, crop_pct: float = 0.875, mean=IMAGENET_DEFAULT_MEAN,
                     std=IMAGENET_DEFAULT_STD, interpolation: str = "bilinear",
                     scale: tuple[float, float] = (0.08, 1.0), ratio: tuple[float, float] = (3 / 4, 4 / 3),
                     hflip: float = 0.5, color_jitter: float = 0.0, auto_augment: str | None = None,
                     re_prob: float = 0.0, re_mode: str = "pixel", re_count: int = 1) -> tuple[Callable, Callable]:
    """(train, eval) transforms from timm. Defaults are the paper recipe: RandomResizedCrop(img_size) + horizontal
    flip for training; resize to img_size / crop_pct (256 for 224) then center crop for evaluation; no color jitter.

    auto_augment takes timm strings such as "rand-m9-mstd0.5-inc1" (RandAugment); re_prob > 0 enables random
    erasing. Take mean, std, crop_pct and interpolation from the model (`model.pretrained_cfg`) unless the config sets
    them.
    """
    if img_size <= 0:
        raise ValueError(f"img_size must be positive, got {img_size}")
    if not 0 < crop_pct <= 1:
        raise ValueError(f"crop_pct must be in (0, 1], got {crop_pct}")
    if interpolation not in INTERPOLATIONS:
        raise ValueError(f"interpolation must be one of {INTERPOLATIONS}, got {interpolation!r}")
    if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
        raise ValueError(f"mean and std need 3 values each (std > 0), got mean={mean} std={std}")
    if not 0 <= re_prob <= 1 or not 0 <= hflip <= 1:
        raise ValueError(f"re_prob and hflip are probabilities in [0, 1], got {re_prob} and {hflip}")
    train = create_transform(
        img_size, is_training=True, scale=tuple(scale), ratio=tuple(ratio), hflip=hflip,
        # timm's default jitter is 0.4; the recipe has none, and None skips the transform (and its RNG draws).
        color_jitter=color_jitter or None, auto_augment=auto_augment or None, interpolation=interpolation,
        mean=tuple(mean), std=tuple(std), re_prob=re_prob, re_mode=re_mode, re_count=re_count)
    evaluate = create_transform(img_size, is_training=False, interpolation=interpolation if interpolation != "random"
                                else "bilinear", mean=tuple(mean), std=tuple(std), crop_pct=crop_pct)
    return train, evaluate
