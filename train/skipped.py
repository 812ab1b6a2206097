"""Unreadable images: recorded by whichever loader worker meets one, reported once per distinct file per run.

A broken file is met many times: again every epoch, in another loader worker or on another rank, and again when it
is the substitute of a broken neighbour. What a user needs is the set of distinct files, so
- `SkipLog` (one per dataset) records every meeting, path and error, in a private temporary directory: one small
  file per process, which any loader worker (forked or spawned, persistent or not) can append to without locks;
- `SkipReport` (one per run) unions the logs of the run's datasets over all ranks (each rank sends only the names
  not known yet), warns once per new file on rank 0, and keeps `skipped_images.txt` in the run directory current
  (sorted, one path per line); a resumed run reads that file back, so a file is counted and warned about once per run.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import weakref
from pathlib import Path

import torch

from . import distributed
from .atomic import atomic_write

_logger = logging.getLogger(__name__)
SKIPPED_FILE = "skipped_images.txt"


def _remove_dir(path: str, owner_pid: int) -> None:
    if os.getpid() == owner_pid:  # a forked loader worker dropping its copy of the log must not delete the files
        shutil.rmtree(path, ignore_errors=True)


class SkipLog:
    """The unreadable samples one dataset met, in this process and in its loader workers."""

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="odconv-skipped-")
        weakref.finalize(self, _remove_dir, self.dir, os.getpid())

    def add(self, name: str, err: BaseException) -> None:
        line = json.dumps(dict(name=name, error=f"{type(err).__name__}: {err}")) + "\n"
        # One write of one short line in append mode: a reader sees whole lines (or, at worst, skips a partial one).
        with open(os.path.join(self.dir, f"{os.getpid()}.jsonl"), "a") as f:
            f.write(line)

    def read(self) -> dict[str, str]:
        """{name: error} of every distinct sample met so far."""
        found: dict[str, str] = {}
        for entry in os.scandir(self.dir):
            with open(entry.path) as f:
                for line in f:
                    try:
                        record = json.loads(line)
                    except json.JSONDecodeError:  # a line still being written: read again next time
                        continue
                    found.setdefault(record["name"], record["error"])
        return found


def unreadable_files(dataset) -> dict[str, str]:
    """{path: error} of the unreadable images `dataset` (or the dataset it wraps) met so far, in this process and its
    loader workers; {} for datasets that keep no log."""
    while not hasattr(dataset, "skips") and hasattr(dataset, "dataset"):  # Subset, SeededDataset and similar
        dataset = dataset.dataset
    skips = getattr(dataset, "skips", None)
    return skips.read() if skips is not None else {}


class SkipReport:
    """Distinct unreadable files of a run, over its datasets and ranks; `update()` is a collective (call it on every
    rank at the same point) and returns the count."""

    def __init__(self, datasets: list, device: torch.device, is_main: bool, run_dir: Path | None = None):
        self.datasets, self.device, self.is_main = datasets, device, is_main
        self.path = Path(run_dir) / SKIPPED_FILE if run_dir is not None else None
        self.known: dict[str, str] = {}
        if self.path is not None and self.path.is_file():  # resumed: these were counted and reported before
            self.known = {line: "" for line in self.path.read_text().splitlines() if line}

    @property
    def count(self) -> int:
        return len(self.known)

    def update(self) -> int:
        local: dict[str, str] = {}
        for ds in self.datasets:
            local.update(unreadable_files(ds))
        new = {k: v for k, v in local.items() if k not in self.known}
        # The common case, no new file on any rank, costs one scalar all-reduce and no gather.
        if distributed.all_reduce_sum([float(len(new))], self.device)[0]:
            fresh: dict[str, str] = {}
            for part in distributed.all_gather_object(new):
                fresh.update({k: v for k, v in part.items() if k not in self.known})
            self.known.update(fresh)
            if self.is_main:
                for name in sorted(fresh):
                    _logger.warning("Skipped unreadable image %s (%s)", name, fresh[name])
                if self.path is not None:
                    with atomic_write(self.path, "w") as f:
                        f.write("".join(f"{name}\n" for name in sorted(self.known)))
        return self.count
