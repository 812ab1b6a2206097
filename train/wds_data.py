"""WebDataset tar shards for cluster-scale reading (scripts/make_wds_shards.py writes them from an image folder).

Layout: `root/_info.json` (timm's format: {"num_classes": C, "splits": {"train": {"num_samples": N, "filenames":
[...], ...}, "validation": {...}}}) next to the shards; without it, `root/[PREFIX-]{split}-*.tar` are found and counted
once (slow on ImageNet-size sets: write the info file, as scripts/make_wds_shards.py does). A sample is an image
(`.jpg`/`.jpeg`/`.png`/`.webp`) plus its class index in `.cls`, as in timm's ImageNet shards.

How the stream is split and resumed:
- training: each epoch the shard list is shuffled with (seed, epoch), the same on every rank; global loader worker g of
  G (G = world size x loader workers) reads shards g, g+G, ..., cycling them, through a sample shuffle buffer seeded
  with (seed, epoch, g), and stops after ceil(N / world / workers) samples, so every rank yields the same number of
  batches and DDP never waits on a rank that ran dry. Call `set_epoch(epoch)` before each epoch (it reaches workers,
  also persistent ones, through shared memory).
- evaluation: worker g reads shards g, g+G, ... exactly once, unshuffled, so each image is seen once over all ranks;
  ranks may yield different numbers of batches, so sum the metrics over ranks after the loop, not per batch.
- resume is per epoch: for a fixed (seed, epoch, world size, loader workers) the stream order is fixed, so a run
  resumed mid-epoch can restart the epoch or skip the consumed batches (decoding them again); there is no random
  access into a tar stream. Exact bit-for-bit mid-epoch resume is a property of the map-style (folder, demo) data.
- rank and world size are read from torch.distributed when the dataset is built: build it after the process group.
- unreadable samples or tar members are skipped and logged (`train.skipped`), or raise in strict mode.
"""
from __future__ import annotations

import glob
import json
import logging
import math
import random
import tarfile
from itertools import islice
from pathlib import Path
from typing import Callable, Iterator

import torch
import torch.distributed as dist
from torch.utils.data import IterableDataset, get_worker_info

from .image_io import DECODE_ERRORS, decode_image, handle_bad_image
from .skipped import SkipLog

_logger = logging.getLogger(__name__)
INFO_FILE = "_info.json"
IMAGE_KEYS = ("jpg", "jpeg", "png", "webp")
VAL_ALIASES = {"val": "validation", "validation": "val"}


class WdsImageDataset(IterableDataset):
    """(image tensor, class index) from tar shards; see the module docstring for splitting and resume."""

    def __init__(self, shards: list[str], num_samples: int, transform: Callable | None = None, *,
                 training: bool, seed: int = 0, strict: bool = False, shuffle_buffer: int = 2000,
                 rank: int | None = None, world_size: int | None = None):
        if not shards:
            raise ValueError("WdsImageDataset needs at least one shard")
        self.shards = list(shards)
        self.num_samples = num_samples
        self.transform = transform
        self.training = training
        self.seed = seed
        self.strict = strict
        self.shuffle_buffer = shuffle_buffer
        initialized = dist.is_available() and dist.is_initialized()
        self.rank = rank if rank is not None else (dist.get_rank() if initialized else 0)
        self.world_size = world_size if world_size is not None else (dist.get_world_size() if initialized else 1)
        self.skips = SkipLog()
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()

    def set_epoch(self, epoch: int) -> None:
        self._epoch.fill_(epoch)

    def __len__(self) -> int:
        # Per rank. Exact for training (the stream is cut to this length, rounded up per loader worker);
        # for evaluation an estimate, since each rank reads whole shards.
        return math.ceil(self.num_samples / self.world_size)

    def __iter__(self) -> Iterator:
        import webdataset as wds

        info = get_worker_info()
        workers, worker_id = (info.num_workers, info.id) if info is not None else (1, 0)
        g, total = self.rank * workers + worker_id, self.world_size * workers
        epoch = int(self._epoch)
        if self.training:
            order = list(self.shards)
            random.Random(f"{self.seed}-{epoch}").shuffle(order)
            if len(order) < total:
                _logger.warning("%d shards for %d loader workers: some workers read the same shards",
                                len(order), total)
            mine = order[g % len(order)::total] or [order[g % len(order)]]
            urls = (dict(url=u) for u in _cycle(mine))
        else:
            urls = (dict(url=u) for u in self.shards[g::total])
        samples = wds.tarfile_to_samples(handler=self._tar_error)(urls)
        decoded = (s for s in map(self._decode, samples) if s is not None)
        if not self.training:
            yield from decoded
            return
        rng = random.Random(f"{self.seed}-{epoch}-{g}")
        shuffled = wds.filters.shuffle(bufsize=self.shuffle_buffer, initial=min(self.shuffle_buffer, 100),
                                       rng=rng)(decoded)
        yield from islice(shuffled, math.ceil(len(self) / workers))

    def _tar_error(self, err: Exception) -> bool:
        handle_bad_image(f"tar stream ({err})", err, self.strict, self.skips)
        return True  # keep reading

    def _decode(self, sample: dict):
        name = f"{sample.get('__url__', '?')}:{sample.get('__key__', '?')}"
        key = next((k for k in IMAGE_KEYS if k in sample), None)
        try:
            if key is None or "cls" not in sample:
                raise ValueError(f"sample has no image or no .cls member (members: {sorted(sample)})")
            img = decode_image(sample[key])
            target = int(sample["cls"])
        except DECODE_ERRORS as err:
            handle_bad_image(name, err, self.strict, self.skips)
            return None
        return (self.transform(img) if self.transform is not None else img), target


def _cycle(items: list[str]) -> Iterator[str]:
    while True:
        yield from items


def build_wds_datasets(root: Path, train_split: str, val_split: str, train_transform: Callable | None,
                       eval_transform: Callable | None, *, strict: bool = False, num_classes: int | None = None,
                       seed: int = 0, shuffle_buffer: int = 2000, root_env: str = "IMAGENET_ROOT"):
    info_path = root / INFO_FILE
    info = json.loads(info_path.read_text()) if info_path.is_file() else {}
    found_classes = info.get("num_classes")
    datasets = []
    for split, transform, training in ((train_split, train_transform, True), (val_split, eval_transform, False)):
        shards, count, classes = _split_shards(root, split, info, root_env)
        found_classes = found_classes or classes
        datasets.append(WdsImageDataset(shards, count, transform, training=training, seed=seed, strict=strict,
                                        shuffle_buffer=shuffle_buffer))
    classes = num_classes or found_classes
    if not classes:
        raise ValueError(f"{info_path} does not give num_classes; set data.num_classes")
    return datasets[0], datasets[1], int(classes)


def _split_shards(root: Path, split: str, info: dict, root_env: str) -> tuple[list[str], int, int | None]:
    """Shard paths, sample count and (when counted here) number of classes of one split."""
    splits = info.get("splits", {})
    name = split if split in splits else VAL_ALIASES.get(split, split)
    if name in splits:
        entry = splits[name]
        return [str(root / f) for f in entry["filenames"]], int(entry["num_samples"]), None
    # `train-000000.tar` (scripts/make_wds_shards.py) or a prefixed name such as timm's `imagenet-train-000000.tar`.
    shards = sorted(glob.glob(str(root / f"{split}-*.tar")) or glob.glob(str(root / f"*-{split}-*.tar")))
    if not shards:
        raise FileNotFoundError(
            f"No shards for split '{split}' under {root}: expected {root}/{split}-*.tar or an {INFO_FILE} listing "
            f"them; set data.root (or the {root_env} environment variable) to the shard folder.")
    _logger.warning("No %s in %s: counting the samples of %d shards (write the file to skip this)",
                    INFO_FILE, root, len(shards))
    count, max_cls = 0, -1
    for shard in shards:
        with tarfile.open(shard) as tar:
            for member in tar:
                if member.name.endswith(".cls"):
                    count += 1
                    max_cls = max(max_cls, int(tar.extractfile(member).read()))
    return shards, count, max_cls + 1
