"""Training checkpoints: written atomically, loaded with weights_only=True, holding everything exact resume needs.

Layout inside the run directory: checkpoints/last.pt (newest, written at epoch ends, on preemption signals and
every trainer.save_every_steps), checkpoints/best.pt (best validation top-1) and checkpoints/epoch_XXXX.pt (the
newest trainer.keep_last of them). Files that hold the same state share their bytes (hard links). A checkpoint is one dict of tensors and plain Python values:
model, optimizer, scheduler, scaler, ema, rng, epoch, batch (micro-batches done in that epoch), step, best_top1,
config (resolved, as a plain dict) and wandb_id.
"""
from __future__ import annotations

import random
import re
from pathlib import Path

import numpy as np
import torch

from .atomic import atomic_link, atomic_write


def rng_state() -> dict:
    state = {
        "torch": torch.get_rng_state(),
        "python": _python_state_to_tensor(random.getstate()),
        "numpy": _numpy_state_to_plain(np.random.get_state()),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(_python_state_from_tensor(state["python"]))
    np.random.set_state(_numpy_state_from_plain(state["numpy"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# weights_only=True loading accepts tensors, dicts, lists, tuples, str, int, float and bool; the Python and NumPy
# RNG states contain large tuples of ints and an ndarray, so they are stored as tensors.
def _python_state_to_tensor(s):
    version, internal, gauss = s
    return {"version": version, "internal": torch.tensor(internal, dtype=torch.int64), "gauss": gauss}


def _python_state_from_tensor(d):
    return d["version"], tuple(int(x) for x in d["internal"].tolist()), d["gauss"]


def _numpy_state_to_plain(s):
    name, keys, pos, has_gauss, cached = s
    return {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
            "has_gauss": int(has_gauss), "cached": float(cached)}


def _numpy_state_from_plain(d):
    return d["name"], d["keys"].numpy().astype(np.uint32), d["pos"], d["has_gauss"], d["cached"]


def save_atomic(obj: dict, path: Path) -> None:
    """A crash or a second signal during the write leaves the previous file intact, never a truncated one."""
    with atomic_write(path, "wb") as f:
        torch.save(obj, f)


def load(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    return torch.load(path, map_location="cpu", weights_only=True)


class CheckpointDir:
    def __init__(self, run_dir: Path, keep_last: int):
        self.dir = Path(run_dir) / "checkpoints"
        self.keep_last = keep_last

    @property
    def last(self) -> Path:
        return self.dir / "last.pt"

    @property
    def best(self) -> Path:
        return self.dir / "best.pt"

    def save(self, state: dict, *, epoch_end: bool, is_best: bool) -> None:
        # The state is serialised once; best.pt and epoch_XXXX.pt, when due, are hard links to that file (an
        # ImageNet ResNet50 checkpoint with its optimizer is ~300 MB: one copy per epoch end, not three).
        save_atomic(state, self.last)
        if is_best:
            atomic_link(self.last, self.best)
        if epoch_end and self.keep_last > 0:
            atomic_link(self.last, self.dir / f"epoch_{state['epoch']:04d}.pt")
            self._prune()

    def _prune(self) -> None:
        epochs = sorted(p for p in self.dir.glob("epoch_*.pt") if re.fullmatch(r"epoch_\d+\.pt", p.name))
        for p in epochs[: -self.keep_last]:
            p.unlink()
