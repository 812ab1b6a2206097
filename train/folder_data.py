"""ImageNet-style image folders (`root/split/CLASS/*.JPEG`) as a map-style dataset, and where the root comes from.

Unreadable images (corrupt or truncated files) never stop a run unless `strict=True`, which raises naming the file:
- training (on_error="substitute"): the sample is replaced by the next readable index, `(i + 1) % len`, so batches
  keep their shape, the loop needs no special case, and index i still maps to the same sample on every epoch and on
  resume;
- evaluation (on_error="drop"): `__getitem__` returns None and `train.datasets.collate_skip_none` removes it, so every
  readable validation image is counted exactly once and none twice.
Either way the file goes into the dataset's `skips` log (`train.skipped`), which the run reports once per file.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import numpy as np
from torch.utils.data import Dataset

from .image_io import DECODE_ERRORS, CorruptImageError, decode_image, handle_bad_image
from .skipped import SkipLog

ROOT_ENV = "IMAGENET_ROOT"
IMG_EXTENSIONS = (".jpeg", ".jpg", ".png", ".webp", ".bmp", ".ppm", ".tif", ".tiff")


class DatasetRootError(FileNotFoundError):
    """The dataset root is missing or holds no images; the message says how to set it."""


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
        self.skips = SkipLog()
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
