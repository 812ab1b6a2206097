"""Load zoo weights from a local file: a plain state dict, the released training script's format, or ours."""
from __future__ import annotations

import argparse
import os
import pickle
from collections.abc import Mapping
from typing import Union

import torch
from torch import nn

# Where a model's state dict sits inside a checkpoint, in the order we look: the released script's
# `{"state_dict": {"module.xxx": ...}}`, this project's training checkpoints, then a plain state dict.
_CONTAINER_KEYS = ("state_dict", "model")


class CheckpointMismatchError(ValueError):
    """The checkpoint's keys or shapes do not fit the model."""


class UnreadableCheckpointError(CheckpointMismatchError):
    """The file is not something `torch.load(..., weights_only=True)` can read. A CheckpointMismatchError too, so
    callers that turn checkpoint errors into one line (detection/cli.py) catch it unchanged."""


def extract_state_dict(obj: object, path: Union[str, os.PathLike] = "<checkpoint>") -> dict[str, torch.Tensor]:
    """The model state dict inside a loaded checkpoint, with DDP's `module.` prefix removed."""
    if not isinstance(obj, Mapping):
        raise CheckpointMismatchError(f"{path} does not hold a state dict (found {type(obj).__name__})")
    for key in _CONTAINER_KEYS:
        if key in obj and isinstance(obj[key], Mapping):
            obj = obj[key]
            break
    state = {}
    for k, v in obj.items():
        if not isinstance(v, torch.Tensor):
            raise CheckpointMismatchError(f"{path}: entry {k!r} is not a tensor; is this a model checkpoint?")
        state[k[len("module."):] if k.startswith("module.") else k] = v
    return state


def read_state_dict(path: Union[str, os.PathLike]) -> dict[str, torch.Tensor]:
    """Read a checkpoint file safely (weights_only) and return its model state dict."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint file not found: {path}")
    return extract_state_dict(load_weights_only(path), path)


def load_weights_only(path: Union[str, os.PathLike]) -> object:
    """`torch.load(path, weights_only=True)` on the CPU, with a one-line error for a file it cannot read.

    torch's own message runs over several lines and suggests `weights_only=False`, which would execute whatever
    code the file holds: our message never does."""
    try:
        # The released KernelWarehouse training script saves its argparse.Namespace under "args": plain data.
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises KeyError, EOFError, RuntimeError, UnpicklingError ... for other bytes
        if isinstance(e, pickle.UnpicklingError) and "Unsupported global" in str(e):
            raise UnreadableCheckpointError(
                f"{path} is not a readable PyTorch checkpoint: it holds Python objects besides tensors and plain "
                "containers, which are never loaded here because loading them can run code") from None
        raise UnreadableCheckpointError(
            f"{path} is not a readable PyTorch checkpoint (not written by torch.save, or truncated)") from None


def load_state_dict_checked(
    model: nn.Module, state: Mapping[str, torch.Tensor], strict: bool = True, source: str = "<checkpoint>"
) -> tuple[list[str], list[str]]:
    """`model.load_state_dict` with errors that list the missing, unexpected and mis-shaped keys."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    mis_shaped = [
        f"{k} {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own if k in state and state[k].shape != own[k].shape
    ]
    if mis_shaped or (strict and (missing or unexpected)):
        parts = [_first_warehouse_mismatch(own, state)] if mis_shaped else []
        if missing:
            parts.append(f"missing keys ({len(missing)}): {', '.join(missing[:20])}" + (" ..." if len(missing) > 20 else ""))
        if unexpected:
            parts.append(
                f"unexpected keys ({len(unexpected)}): {', '.join(unexpected[:20])}"
                + (" ..." if len(unexpected) > 20 else "")
            )
        if mis_shaped:
            parts.append(f"shape mismatches ({len(mis_shaped)}): {'; '.join(mis_shaped[:10])}")
        raise CheckpointMismatchError(f"{source} does not fit {type(model).__name__}: "
                                      + " | ".join(p for p in parts if p))
    model.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)
    return missing, unexpected


def _first_warehouse_mismatch(own: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor]) -> str:
    """For KernelWarehouse models, the first warehouse whose cells differ: the telltale of another setting
    (kw_ratio), named before the list of every key it changes."""
    for k, v in own.items():
        if k.startswith("warehouse_manager.weights.") and k in state and state[k].shape != v.shape:
            return (f"KernelWarehouse warehouse {k.rsplit('.', 1)[1]} ({k}) holds cells {tuple(state[k].shape)} in the "
                    f"checkpoint but {tuple(v.shape)} in the model: a checkpoint of another setting (kw_ratio)")
    return ""


def load_checkpoint(
    model: nn.Module, path: Union[str, os.PathLike], strict: bool = True
) -> tuple[list[str], list[str]]:
    """Load a local checkpoint into `model`; returns (missing, unexpected) keys (both empty when strict)."""
    return load_state_dict_checked(model, read_state_dict(path), strict=strict, source=str(path))
