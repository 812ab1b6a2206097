"""Turn the `nn.Conv2d` layers of any CNN into `ODConv2d` (`nn.Conv1d` into `ODConv1d`, `nn.Conv3d` into
`ODConv3d`) by a simple, explicit policy."""
from __future__ import annotations

import fnmatch
from typing import Iterable, Optional

import torch
from torch import nn

from .conv import ODConv1d, ODConv2d, ODConv3d

_ODCONVS = {nn.Conv1d: ODConv1d, nn.Conv2d: ODConv2d, nn.Conv3d: ODConv3d}
_DIMS = {nn.Conv1d: 1, nn.Conv2d: 2, nn.Conv3d: 3}

# Shortcut (projection) convs stay static in the paper's networks; these are the names torchvision and timm use.
DEFAULT_EXCLUDE = ("*downsample*", "*shortcut*")


def _convertible(name: str, conv: nn.Module, exclude: Iterable[str]) -> bool:
    if any(fnmatch.fnmatchcase(name, pat) for pat in exclude):
        return False
    # Circular/reflect padding and transposed convs (and other subclasses) are not what ODConv computes.
    return conv.padding_mode == "zeros" and type(conv) in _ODCONVS


def _conv_dims(conv: nn.Module) -> int:
    return next(d for cls, d in _DIMS.items() if isinstance(conv, cls))


def convert(
    model: nn.Module,
    kernel_num: int = 1,
    reduction: float = 0.0625,
    exclude: Iterable[str] = (),
    keep_stem: bool = True,
    keep_shortcuts: bool = True,
    init_from_weight: bool = False,
    min_channel: int = 16,
    dims: Optional[Iterable[int]] = None,
    **layer_kwargs,
) -> nn.Module:
    """Replace the `nn.Conv2d` layers of `model` in place by `ODConv2d` (`nn.Conv1d` by `ODConv1d`, `nn.Conv3d` by
    `ODConv3d`) and return the model.

    Converted: the convs of the network's own dimension, that of its first conv in module order (a 2-D CNN's
    `nn.Conv1d` layers, e.g. the channel attention of ECA blocks, stay static), or of every dimension in `dims`.
    Kept static: the first conv in module order (the stem, when `keep_stem`), shortcut convs whose names match
    `*downsample*` or `*shortcut*` (when `keep_shortcuts`) and every conv whose qualified name matches a
    pattern of `exclude` (fnmatch, e.g. ``"layer4.*"``). With `init_from_weight`, each of the `kernel_num`
    kernels starts as a copy of the conv's existing (for instance pretrained) weight; its bias is kept.
    `layer_kwargs` go to every ODConv layer (the ablation switches: attentions, spatial_act, attention_norm).
    """
    patterns = list(exclude) + (list(DEFAULT_EXCLUDE) if keep_shortcuts else [])
    convs = [(n, m) for n, m in model.named_modules() if isinstance(m, tuple(_DIMS))]
    if dims is None:
        dims = {_conv_dims(convs[0][1])} if convs else set()
    else:
        dims = set(dims)
        if not dims <= {1, 2, 3}:
            raise ValueError(f"convert: dims must name 1, 2 or 3 spatial dimensions, got {sorted(dims)}")
    if keep_stem and convs:
        convs = convs[1:]
    for name, conv in convs:
        if _conv_dims(conv) not in dims or not _convertible(name, conv, patterns):
            continue
        padding = conv.padding if isinstance(conv.padding, str) else tuple(conv.padding)
        od = _ODCONVS[type(conv)](
            conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, padding, conv.dilation,
            conv.groups, reduction=reduction, kernel_num=kernel_num, min_channel=min_channel,
            bias=conv.bias is not None, device=conv.weight.device, dtype=conv.weight.dtype, **layer_kwargs,
        )
        if init_from_weight:
            with torch.no_grad():
                od.weight.copy_(conv.weight.unsqueeze(0).expand_as(od.weight))
                if conv.bias is not None:
                    od.bias.copy_(conv.bias)
        od.train(conv.training)
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, od)
    return model
