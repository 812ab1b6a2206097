"""Datasets, transforms and mixup for training: ImageNet folders, WebDataset shards, or the embedded demo digits.

The engine calls this module with plain values (never a DictConfig):

    tf_train, tf_eval = build_transforms(224, crop_pct=0.875, mean=..., std=..., interpolation="bilinear")
    train_ds, val_ds, num_classes = build_datasets(root, "folder", train_transform=tf_train, eval_transform=tf_eval)
    DataLoader(val_ds, ..., collate_fn=collate_skip_none)
    skipped_images(train_ds)   # unreadable images skipped so far, summed over loader workers (per process)

Unreadable images (corrupt or truncated files) never stop a run unless `strict=True`, which raises naming the file:
- training (map-style): the sample is replaced by the next readable index, `(i + 1) % len`, so batches keep their
  shape, the loop needs no special case, and index i still maps to the same sample on every epoch and on resume;
- evaluation: the sample is dropped (`__getitem__` returns None and `collate_skip_none` removes it), so every readable
  validation image is counted exactly once and none twice. A batch whose images are all unreadable collates to None.
Map-style datasets (folder, demo) are deterministic: the engine's sampler owns the order and resumes it exactly.
WebDataset shards are streams; see `train.wds_data` for how they split across ranks and resume (per epoch).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset, default_collate

from train.image_io import DECODE_ERRORS, CorruptImageError, SkipCounter, decode_image, handle_bad_image

ROOT_ENV = "IMAGENET_ROOT"
FORMATS = ("folder", "wds", "demo")
INTERPOLATIONS = ("bilinear", "bicubic", "nearest", "lanczos", "random")
IMG_EXTENSIONS = (".jpeg", ".jpg", ".png", ".webp", ".bmp", ".ppm", ".tif", ".tiff")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class DatasetRootError(FileNotFoundError):
    """The dataset root is missing or holds no images; the message says how to set it."""


class Datasets(NamedTuple):
    train: Dataset
    val: Dataset
    num_classes: int


def resolve_root(root: str | Path | None, env_var: str = ROOT_ENV) -> Path:
    """The dataset root from the argument, or from the environment variable when the argument is empty."""
    value = str(root) if root not in (None, "") else os.environ.get(env_var, "")
    if not value:
        raise DatasetRootError(
            f"No dataset root given: set data.root=/path/to/imagenet or the {env_var} environment variable "
            "(a folder holding train/CLASS/*.JPEG and val/CLASS/*.JPEG).")
    path = Path(value).expanduser()
    if not path.is_dir():
        raise DatasetRootError(
            f"Dataset root {path} does not exist: set data.root (or the {env_var} environment variable) to a folder "
            "holding train/CLASS/*.JPEG and val/CLASS/*.JPEG.")
    return path


class ImageFolderDataset(Dataset):
    """`root/split/CLASS/*.{JPEG,png,...}` read in sorted order; index i is always the same file.

    on_error: "substitute" (training) reads the next readable index instead, "drop" (evaluation) returns None.
    """

    def __init__(self, root: str | Path, split: str, transform: Callable | None = None, *,
                 class_to_idx: dict[str, int] | None = None, strict: bool = False, on_error: str = "substitute",
                 max_consecutive_errors: int = 50, root_env: str = ROOT_ENV):
        if on_error not in ("substitute", "drop"):
            raise ValueError(f"on_error must be 'substitute' or 'drop', got {on_error!r}")
        self.root = Path(root) / split
        self.transform = transform
        self.strict = strict
        self.on_error = on_error
        self.max_consecutive_errors = max_consecutive_errors
        self.skips = SkipCounter()
        files, class_names = _scan_folder(self.root)
        if not files:
            raise DatasetRootError(
                f"No images found under {self.root}: expected {self.root}/CLASS/*.JPEG; set data.root "
                f"(or the {root_env} environment variable) to an ImageNet-style folder.")
        if class_to_idx is None:
            class_to_idx = {name: i for i, name in enumerate(sorted(set(class_names)))}
        unknown = sorted(set(class_names) - set(class_to_idx))
        if unknown:
            raise ValueError(f"{self.root} has class folders absent from the training split: {unknown[:5]}")
        self.class_to_idx = class_to_idx
        self.classes = sorted(class_to_idx, key=class_to_idx.get)
        # numpy arrays instead of Python lists: forked loader workers touching list items would copy the whole list
        # (refcounts live in the objects), which multiplies ImageNet's 1.28M paths by the number of workers.
        self._files = np.array([f.encode() for f in files])
        self.targets = np.array([class_to_idx[c] for c in class_names], dtype=np.int64)

    def __len__(self) -> int:
        return len(self._files)

    def path(self, index: int) -> Path:
        return self.root / self._files[index].decode()

    def __getitem__(self, index: int):
        n = len(self)
        for attempt in range(self.max_consecutive_errors):
            i = (index + attempt) % n
            path = self.path(i)
            try:
                img = decode_image(path)
            except DECODE_ERRORS as err:
                handle_bad_image(str(path), err, self.strict, self.skips)
                if self.on_error == "drop":
                    return None
                continue
            if self.transform is not None:
                img = self.transform(img)
            return img, int(self.targets[i])
        raise CorruptImageError(
            f"{self.max_consecutive_errors} consecutive images from {self.path(index)} on are unreadable; "
            f"check the files under {self.root}.")


def _scan_folder(split_root: Path) -> tuple[list[str], list[str]]:
    """Relative paths `CLASS/file` and their class names, sorted; only the first level of class folders."""
    if not split_root.is_dir():
        return [], []
    files, classes = [], []
    for class_dir in sorted(e.name for e in os.scandir(split_root) if e.is_dir()):
        names = sorted(e.name for e in os.scandir(split_root / class_dir)
                       if e.is_file() and e.name.lower().endswith(IMG_EXTENSIONS))
        files.extend(f"{class_dir}/{name}" for name in names)
        classes.extend([class_dir] * len(names))
    return files, classes


def build_datasets(root: str | Path | None, fmt: str = "folder", *, train_split: str = "train",
                   val_split: str = "val", train_transform: Callable | None = None,
                   eval_transform: Callable | None = None, strict: bool = False, num_classes: int | None = None,
                   seed: int = 0, shuffle_buffer: int = 2000, root_env: str = ROOT_ENV) -> Datasets:
    """Training and validation datasets plus the number of classes.

    fmt "folder": ImageNet layout under root (or the environment variable `root_env`); "demo": the digits, written
    on first use under root (or the cache directory); "wds": tar shards under root (see `train.wds_data`). `seed`
    and `shuffle_buffer` apply to wds only (map-style order belongs to the engine's sampler). `num_classes`
    overrides the count found.
    """
    if fmt not in FORMATS:
        raise ValueError(f"data format must be one of {FORMATS}, got {fmt!r}")
    if fmt == "wds":
        from train.wds_data import build_wds_datasets

        return Datasets(*build_wds_datasets(resolve_root(root, root_env), train_split, val_split, train_transform,
                                            eval_transform, strict=strict, num_classes=num_classes, seed=seed,
                                            shuffle_buffer=shuffle_buffer, root_env=root_env))
    if fmt == "demo":
        from train.demo_data import prepare_demo_dataset

        path = prepare_demo_dataset(root or None)
    else:
        path = resolve_root(root, root_env)
    train = ImageFolderDataset(path, train_split, train_transform, strict=strict, on_error="substitute",
                               root_env=root_env)
    val = ImageFolderDataset(path, val_split, eval_transform, class_to_idx=train.class_to_idx, strict=strict,
                             on_error="drop", root_env=root_env)
    found = len(train.class_to_idx)
    if num_classes is not None and num_classes < found:
        raise ValueError(f"data.num_classes={num_classes} but {path / train_split} holds {found} class folders")
    return Datasets(train, val, num_classes or found)


def collate_skip_none(batch: list):
    """default_collate without the samples a dataset dropped (None); None when nothing is left."""
    batch = [sample for sample in batch if sample is not None]
    return default_collate(batch) if batch else None


def skipped_images(dataset: Dataset) -> int:
    """Unreadable images skipped so far by this process and its loader workers (0 for datasets without a count)."""
    while not hasattr(dataset, "skips") and hasattr(dataset, "dataset"):  # Subset and similar wrappers
        dataset = dataset.dataset
    skips = getattr(dataset, "skips", None)
    return skips.total if skips is not None else 0


def build_transforms(img_size: int = 224, *, crop_pct: float = 0.875, mean=IMAGENET_MEAN, std=IMAGENET_STD,
                     interpolation: str = "bilinear", scale: tuple[float, float] = (0.08, 1.0),
                     ratio: tuple[float, float] = (3 / 4, 4 / 3), hflip: float = 0.5, color_jitter: float = 0.0,
                     auto_augment: str | None = None, re_prob: float = 0.0, re_mode: str = "pixel",
                     re_count: int = 1) -> tuple[Callable, Callable]:
    """(train, eval) transforms from timm. Defaults are the paper recipe: RandomResizedCrop(img_size) + horizontal
    flip for training; resize to img_size / crop_pct (256 for 224) then center crop for evaluation; no color jitter.

    auto_augment takes timm strings such as "rand-m9-mstd0.5-inc1" (RandAugment); re_prob > 0 enables random
    erasing. Take mean, std, crop_pct and interpolation from the model (`model.pretrained_cfg`) unless the config sets
    them.
    """
    from timm.data import create_transform

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


def build_mixup(num_classes: int, *, mixup_alpha: float = 0.0, cutmix_alpha: float = 0.0, prob: float = 1.0,
                switch_prob: float = 0.5, mode: str = "batch", label_smoothing: float = 0.0):
    """timm's Mixup (applied to each batch in the loop, which then needs `build_criterion(mixup=True)`), or None when
    both alphas are 0, the paper recipe. In "batch" mode the per-rank batch size must be even."""
    if mixup_alpha < 0 or cutmix_alpha < 0:
        raise ValueError(f"mixup_alpha and cutmix_alpha must be >= 0, got {mixup_alpha} and {cutmix_alpha}")
    if mixup_alpha == 0 and cutmix_alpha == 0:
        return None
    from timm.data import Mixup

    return Mixup(mixup_alpha=mixup_alpha, cutmix_alpha=cutmix_alpha, prob=prob, switch_prob=switch_prob, mode=mode,
                 label_smoothing=label_smoothing, num_classes=num_classes)


def build_criterion(*, mixup: bool = False, label_smoothing: float = 0.0) -> nn.Module:
    """Training loss: soft-target cross entropy after mixup (mixup already smoothed the targets), otherwise cross
    entropy with optional label smoothing (0 in the paper recipe). Evaluation uses plain cross entropy."""
    if not 0 <= label_smoothing < 1:
        raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
    if mixup:
        from timm.loss import SoftTargetCrossEntropy

        return SoftTargetCrossEntropy()
    return nn.CrossEntropyLoss(label_smoothing=label_smoothing)


def model_data_config(model: torch.nn.Module) -> dict:
    """img_size, crop_pct, mean, std and interpolation from a timm model's pretrained_cfg."""
    from timm.data import resolve_model_data_config

    cfg = resolve_model_data_config(model)
    return dict(img_size=cfg["input_size"][-1], crop_pct=cfg["crop_pct"], mean=tuple(cfg["mean"]),
                std=tuple(cfg["std"]), interpolation=cfg["interpolation"])
