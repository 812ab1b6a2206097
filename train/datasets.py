"""The training and validation datasets of a run, by format: ImageNet folders, WebDataset shards, or the demo digits.

The engine calls this module with plain values (never a DictConfig):

    train_ds, val_ds, num_classes = build_datasets(root, "folder", train_transform=tf_train, eval_transform=tf_eval)
    DataLoader(val_ds, ..., collate_fn=collate_skip_none)

Map-style datasets (folder, demo; `train.folder_data`) are deterministic: the engine's sampler owns the order and
resumes it exactly. WebDataset shards are streams; see `train.wds_data` for how they split across ranks and resume
(per epoch). How unreadable images are skipped and reported: `train.folder_data` and `train.skipped`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, NamedTuple

from torch.utils.data import Dataset, default_collate

from .demo_data import prepare_demo_dataset
from .folder_data import ROOT_ENV, DatasetRootError, ImageFolderDataset, resolve_root  # noqa: F401  (raised here)
from .wds_data import build_wds_datasets

FORMATS = ("folder", "wds", "demo")


class Datasets(NamedTuple):
    train: Dataset
    val: Dataset
    num_classes: int


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
        return Datasets(*build_wds_datasets(resolve_root(root, root_env), train_split, val_split, train_transform,
                                            eval_transform, strict=strict, num_classes=num_classes, seed=seed,
                                            shuffle_buffer=shuffle_buffer, root_env=root_env))
    if fmt == "demo":
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
