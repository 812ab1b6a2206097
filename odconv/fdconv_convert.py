"""From a static network or checkpoint to FDConv: `convert_to_fdconv` replaces a model's `nn.Conv2d` layers by
`FDConv2d` (each starting from its conv's kernel, moved to the Fourier domain), `static_to_fdconv_state_dict`
rewrites a static state dict's `X.weight` into `X.dft_weight` for the layers of a given FDConv model, and
`released_fdconv_state_dict` does what the released tool (tools/convert_to_fdconv.py) does to a checkpoint.

A converted layer starts from the static kernel, but with the released initialisation (`gate_init="released"`,
the default, kept for reproduction) its filter gate is a random factor in (0, 2) per output channel and sample,
so the converted network does not compute the static one; `gate_init="exact"` starts every gate at exactly 1,
and the converted network then computes the static network (up to rounding).
"""
from __future__ import annotations

import fnmatch
from typing import Iterable, Mapping, Sequence

import torch
from torch import Tensor, nn

from .convert import DEFAULT_EXCLUDE
from .fdconv import FDConv2d, dft_weight_from_weight


def convert_to_fdconv(
    model: nn.Module, exclude: Iterable[str] = (), keep_stem: bool = True, keep_shortcuts: bool = True,
    gate_init: str = "released", **layer_kwargs,
) -> nn.Module:
    """Replace, in place, each `nn.Conv2d` of `model` that passes FDConv's gate (see `fdconv_applies`, with the
    thresholds in `layer_kwargs`) by an `FDConv2d` whose `dft_weight` is the conv's kernel (bias kept), and return
    the model. Kept static as in the released ResNet: the first conv (the stem, when `keep_stem`; a 7x7 stem fails
    the gate anyway), shortcut convs named `*downsample*`/`*shortcut*` (when `keep_shortcuts`) and every conv
    whose qualified name matches a pattern of `exclude`. `layer_kwargs` go to every `FDConv2d` (e.g. kernel_num=64
    as in the released detection configs)."""
    patterns = list(exclude) + (list(DEFAULT_EXCLUDE) if keep_shortcuts else [])
    convs = [(n, m) for n, m in model.named_modules() if type(m) is nn.Conv2d]
    if keep_stem and convs:
        convs = convs[1:]
    for name, conv in convs:
        if any(fnmatch.fnmatchcase(name, p) for p in patterns) or conv.padding_mode != "zeros":
            continue
        padding = conv.padding if isinstance(conv.padding, str) else tuple(conv.padding)
        fd = FDConv2d(
            conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, padding, conv.dilation, conv.groups,
            conv.bias is not None, gate_init=gate_init, device=conv.weight.device, dtype=conv.weight.dtype,
            **layer_kwargs,
        )
        if not fd.is_dynamic:
            continue
        with torch.no_grad():
            fd.dft_weight.copy_(dft_weight_from_weight(conv.weight, fd.param_ratio))
            if conv.bias is not None:
                fd.bias.copy_(conv.bias)
        fd.train(conv.training)
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, fd)
    return model


def static_to_fdconv_state_dict(state_dict: Mapping[str, Tensor], model: nn.Module) -> dict[str, Tensor]:
    """`state_dict` (of the static twin of `model`) with `X.weight` replaced by `X.dft_weight` for every FDConv2d
    `X` of `model` that holds one; load the result with strict=False (the modulation parameters are new) or into
    a model that already has them."""
    out = dict(state_dict)
    for name, module in model.named_modules():
        if isinstance(module, FDConv2d) and "dft_weight" in module._parameters:
            key = f"{name}.weight" if name else "weight"
            if key not in out:
                raise KeyError(f"checkpoint has no {key!r} for the FDConv layer {name!r}")
            out[f"{key[: -len('weight')]}dft_weight"] = dft_weight_from_weight(out.pop(key), module.param_ratio)
    return out


def released_fdconv_state_dict(
    state_dict: Mapping[str, Tensor], patterns: Sequence[str] = ("conv1.weight", "conv2.weight", "conv3.weight"),
    min_channels: int = 32, kernel_sizes: Sequence[int] = (1, 3),
) -> dict[str, Tensor]:
    """The released checkpoint converter (its "resnet" mode): every 4-D `*.weight` whose key contains one of
    `patterns`, with min(C_out, C_in) >= `min_channels` (32 there; the layer's own gate is > 16, which differs
    only for 17 to 31 channels) and a kernel size in `kernel_sizes`, becomes `*.dft_weight`."""
    out = dict(state_dict)
    for key, value in state_dict.items():
        if not any(p in key for p in patterns) or value.dim() != 4:
            continue
        cout, cin, k, _ = value.shape
        if min(cout, cin) >= min_channels and k in kernel_sizes:
            out.pop(key)
            out[f"{key[: -len('weight')]}dft_weight"] = dft_weight_from_weight(value)
    return out
