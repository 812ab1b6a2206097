"""Fixes for running mmengine 0.10 / mmcv 2.1 / mmdet 3.3 on current torch, applied on import (never by editing
site-packages). `detection.train` / `detection.test` import this before reading a config: the `mmdet::` base
configs are resolved before a config's own `custom_imports` run.

- torch >= 2.6 loads checkpoints with `weights_only=True`, and mmengine's own checkpoints carry its
  `HistoryBuffer` objects and numpy arrays in `message_hub`, so `load_from` / `resume` fail to unpickle.
  We re-register mmengine's local-file loader to keep `weights_only=True` (no arbitrary code from a checkpoint)
  while allowing exactly the few classes mmengine itself writes. Its `HistoryBuffer` also pickled its built-in
  statistics methods as `getattr(HistoryBuffer, "min")`, and allowing `getattr` would allow anything; those
  built-ins are now restored on load instead of stored (statistics registered by users are not carried over).
- mmengine finds `mmdet::` base configs through `pkg_resources`, which setuptools >= 81 no longer ships (and torch
  needs setuptools >= 77): its two package look-ups are replaced with `importlib` equivalents.
- Under torchrun and under Slurm (`--launcher slurm`, one task per process from `srun`), mmengine calls
  `torch.cuda.set_device` before joining the process group, which fails on a CPU-only machine; there the group
  is joined directly (the launch code picks the gloo backend), from the same environment mmengine would set.
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import os.path as osp
import subprocess
import sys

import mmengine.config.config
import mmengine.dist.utils
import mmengine.hub.hub
import mmengine.utils
import numpy as np
import torch
from mmengine.logging import HistoryBuffer
from mmengine.runner.checkpoint import CheckpointLoader

_multiarray = np._core.multiarray if hasattr(np, "_core") else np.core.multiarray
# What mmengine's Runner.save_checkpoint pickles besides tensors (its message hub's smoothed logs and metadata).
MMENGINE_CHECKPOINT_GLOBALS = [
    HistoryBuffer,
    np.ndarray,
    np.dtype,
    _multiarray._reconstruct,
    _multiarray.scalar,
    *(type(np.dtype(t)) for t in ("float64", "float32", "int64", "int32", "bool")),
]


def load_from_local(filename: str, map_location=None):
    """mmengine's local checkpoint loader, weights-only with mmengine's own classes allowed."""
    filename = osp.expanduser(filename)
    if not osp.isfile(filename):
        raise FileNotFoundError(f"checkpoint file not found: {filename}")
    with torch.serialization.safe_globals(MMENGINE_CHECKPOINT_GLOBALS):
        return torch.load(filename, map_location=map_location, weights_only=True)


CheckpointLoader.register_scheme(prefixes="", loader=load_from_local, force=True)

_BUILTIN_STATISTICS = ("min", "max", "current", "mean")
_history_buffer_setstate = HistoryBuffer.__setstate__


def _getstate(self: HistoryBuffer) -> dict:
    state = dict(self.__dict__)
    state.pop("statistics_methods", None)
    return state


def _setstate(self: HistoryBuffer, state: dict) -> None:
    for name in _BUILTIN_STATISTICS:
        HistoryBuffer._statistics_methods.setdefault(name, getattr(HistoryBuffer, name))
    _history_buffer_setstate(self, state)


HistoryBuffer.__getstate__ = _getstate
HistoryBuffer.__setstate__ = _setstate


def is_installed(package: str) -> bool:
    """mmengine's `is_installed` without pkg_resources: an installed distribution or an importable module."""
    try:
        importlib.metadata.distribution(package)
        return True
    except importlib.metadata.PackageNotFoundError:
        spec = importlib.util.find_spec(package)
        return spec is not None and spec.origin is not None


def get_installed_path(package: str) -> str:
    """mmengine's `get_installed_path` without pkg_resources (the packages it asks for are their own module)."""
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError(f"package {package} is not installed")
    return osp.dirname(spec.origin)


# mmengine's modules bound these names at import time, so each binding is replaced.
for _name in ("mmengine.utils.package_utils", "mmengine.utils", "mmengine.config.config", "mmengine.hub.hub"):
    for _fn in (is_installed, get_installed_path):
        if hasattr(sys.modules[_name], _fn.__name__):
            setattr(sys.modules[_name], _fn.__name__, _fn)


_init_dist_pytorch_with_cuda = mmengine.dist.utils._init_dist_pytorch


def _init_dist_pytorch(backend: str, init_backend: str = "torch", **kwargs) -> None:
    if torch.cuda.is_available() or init_backend != "torch":
        return _init_dist_pytorch_with_cuda(backend, init_backend=init_backend, **kwargs)
    torch.distributed.init_process_group(backend=backend, **kwargs)


mmengine.dist.utils._init_dist_pytorch = _init_dist_pytorch

_init_dist_slurm_with_cuda = mmengine.dist.utils._init_dist_slurm


def _init_dist_slurm(backend: str, port=None, init_backend: str = "torch", **kwargs) -> None:
    """The job's tasks meet on the first node of the allocation: rank and world size from SLURM_PROCID and
    SLURM_NTASKS, the port from `port`, MASTER_PORT or torch's default, as mmengine's Slurm launch does."""
    if torch.cuda.is_available() or init_backend != "torch":
        return _init_dist_slurm_with_cuda(backend, port=port, init_backend=init_backend, **kwargs)
    nodes = subprocess.run(["scontrol", "show", "hostnames", os.environ["SLURM_NODELIST"]], capture_output=True,
                           text=True, check=True).stdout.split()
    os.environ.setdefault("MASTER_ADDR", nodes[0])
    os.environ["MASTER_PORT"] = str(port) if port is not None else os.environ.get("MASTER_PORT", "29500")
    os.environ.update(WORLD_SIZE=os.environ["SLURM_NTASKS"], RANK=os.environ["SLURM_PROCID"],
                      LOCAL_RANK=os.environ.get("SLURM_LOCALID", "0"))
    torch.distributed.init_process_group(backend=backend, **kwargs)


mmengine.dist.utils._init_dist_slurm = _init_dist_slurm
