"""Process group set-up (torchrun, Slurm through submitit, or one process) and the samplers that make
the data order a function of (seed, epoch, position), so that resume and world size do not change it."""
from __future__ import annotations

import datetime
import os
import random
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import Dataset, Sampler


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def export_launcher_env() -> None:
    """Under a submitit job with several tasks (Slurm, or the local executor that tests use), derive torchrun's
    variables from the job environment; torchrun itself is not used there, srun starts one task per GPU."""
    if "RANK" in os.environ or "SUBMITIT_EXECUTOR" not in os.environ:
        return
    import submitit

    env = submitit.JobEnvironment()
    if env.num_tasks > 1:
        submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)


def init(device: str = "auto") -> DistInfo:
    """Join the process group described by the environment (RANK/WORLD_SIZE/MASTER_ADDR...), if any."""
    export_launcher_env()
    use_cuda = torch.cuda.is_available() if device == "auto" else device == "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        from .config import ConfigError

        raise ConfigError("trainer.device=cuda but no CUDA device is visible; use trainer.device=cpu")
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if use_cuda:
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
    else:
        dev = torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        # Long timeout: rank 0 may spend minutes writing the demo dataset or a checkpoint while others wait.
        dist.init_process_group("nccl" if use_cuda else "gloo", timeout=datetime.timedelta(minutes=30))
    return DistInfo(rank, world_size, local_rank, dev)


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def broadcast_object(obj, src: int = 0):
    """Rank `src`'s value of a picklable object on every rank (used for the run directory and wandb id)."""
    if not dist.is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_gather_object(obj) -> list:
    """Every rank's value of a picklable object, in rank order (`[obj]` without a process group)."""
    if not dist.is_initialized():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    """Sum of each value over all ranks, in float64 so that counts of a million images stay exact."""
    t = torch.tensor(values, dtype=torch.float64, device=device)
    if dist.is_initialized():
        dist.all_reduce(t)
    return t.tolist()


class ResumableSampler(Sampler):
    """Training order: one permutation per epoch of the whole dataset, cut into global batches; each rank takes
    its slice of every global batch. The union of what the ranks see at each step is the same for any world
    size, and `start_batch` skips the batches already trained on, so a resumed run sees what it would have seen.

    Yields (index, seed) pairs: `SeededDataset` seeds the augmentation of each sample with it, which makes the
    random crops independent of worker count, rank and interruptions.
    """

    def __init__(self, n: int, global_batch: int, rank: int, world_size: int, seed: int):
        if n < global_batch:
            raise ValueError(f"the training set has {n} images, fewer than one global batch of {global_batch}")
        self.n, self.global_batch, self.rank, self.world_size, self.seed = n, global_batch, rank, world_size, seed
        self.local_batch = global_batch // world_size
        self.epoch, self.start_batch = 0, 0

    def set_position(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = epoch, start_batch

    def batches_per_epoch(self) -> int:
        return self.n // self.global_batch  # last partial batch dropped, as in the released script

    def __len__(self) -> int:
        return (self.batches_per_epoch() - self.start_batch) * self.local_batch

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        perm = torch.randperm(self.n, generator=g).tolist()
        for b in range(self.start_batch, self.batches_per_epoch()):
            lo = b * self.global_batch + self.rank * self.local_batch
            for pos in range(lo, lo + self.local_batch):
                yield perm[pos], (self.seed * 1_000_003 + self.epoch) * 10_000_019 + pos


class EvalShardSampler(Sampler):
    """Rank r evaluates images r, r + W, r + 2W, ...: every image exactly once, no padding (DistributedSampler
    pads the last batch with repeats, which biases the accuracy slightly)."""

    def __init__(self, n: int, rank: int, world_size: int):
        self.indices = list(range(rank, n, world_size))

    def __len__(self) -> int:
        return len(self.indices)

    def __iter__(self):
        return iter(self.indices)


class SeededDataset(Dataset):
    """Wraps a map-style dataset; `ds[(index, seed)]` draws the sample's augmentation from `seed` alone.
    The caller's RNG state is restored afterwards, so model dropout in the main process is not disturbed."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key):
        index, seed = key
        py_state, np_state = random.getstate(), np.random.get_state()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed % (2**63))
            random.seed(seed)
            np.random.seed(seed % (2**32))
            try:
                return self.dataset[index]
            finally:
                random.setstate(py_state)
                np.random.set_state(np_state)
