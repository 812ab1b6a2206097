"""Detector checkpoints for `detection.test`: read safely, in either layout, and loaded strictly.

Two layouts exist for the backbone's weights: ours nests the zoo network under `backbone.body.*`, the released
ODConv detectors (and mmdet's own backbones) keep it directly under `backbone.*`, with the unused ImageNet
classifier. Both load; any other key that does not fit stops the evaluation with the keys listed, since
evaluating a detector whose backbone silently kept its random weights would report a meaningless AP.
"""
from __future__ import annotations

import pickle

import torch
from mmengine.model import is_model_wrapper
from torch import nn

import models

from .backbones import ZooBackbone
from .compat import load_from_local


def read_detector_state(path: str) -> dict[str, torch.Tensor]:
    """The model state dict inside a checkpoint written by mmengine (ours), mmcv 1.x (released) or torch.save."""
    try:
        obj = load_from_local(path, map_location="cpu")
    except FileNotFoundError:
        raise
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, OSError) as e:
        # torch's weights-only refusal spans lines and suggests loading unsafely; we never load that way.
        reason = "it holds Python objects besides tensors and mmengine's records" if "Unsupported global" in str(e) \
            else "not a file written by torch.save"
        raise models.CheckpointMismatchError(f"{path} is not a readable PyTorch checkpoint ({reason})") from None
    return models.extract_state_dict(obj, path)


def to_our_layout(model: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`state` with every zoo backbone's keys moved under `body` (a state dict in our layout is unchanged)."""
    for name, module in model.named_modules():
        if isinstance(module, ZooBackbone):
            state = module.adopt_layout(state, f"{name}." if name else "")
    return state


def load_detector_checkpoint(model: nn.Module, path: str) -> None:
    """Load a detector checkpoint of either layout into `model` (unwrapped from DDP); every key must fit."""
    if is_model_wrapper(model):
        model = model.module
    state = to_our_layout(model, read_detector_state(path))
    models.load_state_dict_checked(model, state, strict=True, source=str(path))
