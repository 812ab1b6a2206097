"""timm registration of the zoo: `timm.create_model("od_resnet50", kernel_num=4)` after `import models`.

One builder per model, as timm writes them: the function's name is the model name, `model_args` holds what the
variant fixes, and the caller's kwargs win (`dict(model_args, **kwargs)`). Four families per architecture:
`od_` (ODConv), `condconv_`, `dyconv_` and `static_` (plain convs); and `dcd_`, the released DCD networks (their own
section at the end). Static twins are named `static_*` so they
never replace timm's own `resnet50` or `mobilenetv2_100`.

Builder kwargs (besides timm's num_classes, in_chans, global_pool, features_only, device, dtype):
- the dynamic layer's own arguments, one value for the whole network (see `odconv.create_dynamic_conv`):
  od_: kernel_num (zoo default 1), reduction, min_channel, attentions, spatial_act, attention_norm;
  condconv_: num_experts (8); dyconv_: kernel_num (4), reduction (4); other defaults are the layer's;
- dynamic_stages: which of the four stages (strides 4, 8, 16, 32) get the dynamic conv, default all;
- dropout (or timm's drop_rate) before the classifier: decided here and only here, see `default_dropout`.
"""
from __future__ import annotations

import inspect
from typing import Any, Optional

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model

from odconv import DYNAMIC_CONVS

from .dcd import DCDMobileNetV2, DCDResNet
from .layers import DynamicConvFactory, static_conv
from .mobilenetv2 import MobileNetV2
from .resnet import ResNet

PREFIXES = {"od": "od_", "condconv": "condconv_", "dyconv": "dyconv_", None: "static_"}
ARCHS = ("resnet18", "resnet34", "resnet50", "resnet101", "mobilenetv2_050", "mobilenetv2_075", "mobilenetv2_100")

# Where the zoo's default differs from the layer's own: ODConv's main rows are "1x" (one kernel).
ZOO_LAYER_DEFAULTS: dict[str, dict[str, Any]] = {"od": dict(kernel_num=1)}

# The geometry a network gives each layer; everything else in a layer's signature is a network-wide argument.
_GEOMETRY = {"in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation", "groups", "bias",
             "device", "dtype"}
LAYER_ARGS: dict[str, tuple[str, ...]] = {
    kind: tuple(p for p in inspect.signature(cls).parameters if p not in _GEOMETRY)
    for kind, cls in DYNAMIC_CONVS.items()
}
_ALL_LAYER_ARGS = {a for args in LAYER_ARGS.values() for a in args} | {"dynamic_stages"}


def _cfg(first_conv: str, classifier: str) -> dict[str, Any]:
    # The released training recipe: 224 crops from 256 resizes (crop_pct 0.875), bilinear, ImageNet mean/std.
    return dict(
        num_classes=1000, input_size=(3, 224, 224), pool_size=(7, 7), crop_pct=0.875, interpolation="bilinear",
        mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD, first_conv=first_conv, classifier=classifier,
        license="mit",
    )


# DCD (odconv/dcd.py, models/dcd.py): the released networks, with the released dynamic classifier.
DCD_ARCHS = ("resnet18", "resnet34", "resnet50", "resnet101", "mobilenetv2_100")
DCD_MODEL_NAMES = tuple("dcd_" + a for a in DCD_ARCHS)

default_cfgs = generate_default_cfgs({
    **{prefix + arch: _cfg("conv1", "fc") if arch.startswith("resnet") else _cfg("features.0.0", "classifier.1")
       for prefix in PREFIXES.values() for arch in ARCHS},
    **{name: _cfg("conv1" if "resnet" in name else "features.0.0", "classifier.1") for name in DCD_MODEL_NAMES},
})


def kernel_count(kind: Optional[str], layer_kwargs: dict[str, Any]) -> int:
    """Kernels per dynamic conv (ODConv/DyConv kernel_num, CondConv num_experts); 1 for a static network."""
    if kind is None:
        return 1
    params = inspect.signature(DYNAMIC_CONVS[kind]).parameters
    key = "num_experts" if "num_experts" in params else "kernel_num"
    return int(layer_kwargs.get(key, params[key].default))


def default_dropout(kernels: int) -> float:
    """Dropout before the classifier when the caller gives none: 0.2 for networks whose dynamic convs hold 4 or
    more kernels (ODConv 4x, DyConv 4x, CondConv 8x), 0.1 for all others, static twins included.

    The released training script takes `--dropout` per run and does not record it per model; this is the
    project's stated assumption for the paper's rows (README). The training configs leave `model.dropout`
    unset to use it.
    """
    return 0.2 if kernels >= 4 else 0.1


def _split_kwargs(variant: str, kind: Optional[str], kwargs: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(layer kwargs, model kwargs); a layer argument of another family is a ValueError naming the right model."""
    own = set(LAYER_ARGS[kind]) | {"dynamic_stages"} if kind else set()
    foreign = sorted(k for k in kwargs if k in _ALL_LAYER_ARGS and k not in own)
    if foreign:
        arch = variant[len(PREFIXES[kind]):]
        if kind is None:
            raise ValueError(f"{variant} is a static model and takes no {', '.join(foreign)}; use od_{arch}, "
                             f"condconv_{arch} or dyconv_{arch}")
        raise ValueError(f"{variant} takes no {', '.join(foreign)}; its layer arguments are "
                         f"{', '.join(sorted(own))}")
    layer = {k: kwargs.pop(k) for k in list(kwargs) if k in own and k != "dynamic_stages"}
    return dict(ZOO_LAYER_DEFAULTS.get(kind, {}), **layer), kwargs


def _pop_dropout(kwargs: dict[str, Any], default: float) -> float:
    """Accept the zoo's `dropout` and timm's `drop_rate`; giving both is ambiguous."""
    if "dropout" in kwargs and "drop_rate" in kwargs:
        raise ValueError("give either dropout or drop_rate, not both")
    return kwargs.pop("dropout", kwargs.pop("drop_rate", default))


def _create(cls: type, variant: str, kind: Optional[str], pretrained: bool, **kwargs):
    if pretrained:
        raise ValueError(
            f"{variant}: no weights can be downloaded here; build with pretrained=False and use "
            "models.load_checkpoint(model, path) with a local checkpoint"
        )
    layer_kwargs, kwargs = _split_kwargs(variant, kind, kwargs)
    dropout = _pop_dropout(kwargs, default_dropout(kernel_count(kind, layer_kwargs)))
    conv = DynamicConvFactory(kind, **layer_kwargs) if kind else static_conv
    return build_model_with_cfg(
        cls, variant, pretrained, conv=conv, dropout=dropout, **kwargs,
        # MobileNetV2's stages live inside one `features` Sequential, so timm must flatten it to find them.
        feature_cfg=dict(flatten_sequential=cls is MobileNetV2, out_indices=(0, 1, 2, 3)),
    )


def _create_resnet(variant: str, kind: Optional[str], pretrained: bool = False, **kwargs) -> ResNet:
    return _create(ResNet, variant, kind, pretrained, **kwargs)


def _create_mobilenetv2(variant: str, kind: Optional[str], pretrained: bool = False, **kwargs) -> MobileNetV2:
    return _create(MobileNetV2, variant, kind, pretrained, **kwargs)


# ODConv
@register_model
def od_resnet18(pretrained: bool = False, **kwargs) -> ResNet:
    """ResNet18, ODConv in every residual-block conv."""
    model_args = dict(depth=18)
    return _create_resnet("od_resnet18", "od", pretrained, **dict(model_args, **kwargs))


@register_model
def od_resnet34(pretrained: bool = False, **kwargs) -> ResNet:
    """ResNet34, ODConv in every residual-block conv."""
    model_args = dict(depth=34)
    return _create_resnet("od_resnet34", "od", pretrained, **dict(model_args, **kwargs))


@register_model
def od_resnet50(pretrained: bool = False, **kwargs) -> ResNet:
    """ResNet50, ODConv in every residual-block conv."""
    model_args = dict(depth=50)
    return _create_resnet("od_resnet50", "od", pretrained, **dict(model_args, **kwargs))


@register_model
def od_resnet101(pretrained: bool = False, **kwargs) -> ResNet:
    """ResNet101, ODConv in every residual-block conv."""
    model_args = dict(depth=101)
    return _create_resnet("od_resnet101", "od", pretrained, **dict(model_args, **kwargs))


@register_model
def od_mobilenetv2_050(pretrained: bool = False, **kwargs) -> MobileNetV2:
    """MobileNetV2 (0.5x), ODConv in every conv but the stem."""
    model_args = dict(width_mult=0.5)
    return _create_mobilenetv2("od_mobilenetv2_050", "od", pretrained, **dict(model_args, **kwargs))


@register_model
def od_mobilenetv2_075(pretrained: bool = False, **kwargs) -> MobileNetV2:
    """MobileNetV2 (0.75x), ODConv in every conv but the stem."""
    model_args = dict(width_mult=0.75)
    return _create_mobilenetv2("od_mobilenetv2_075", "od", pretrained, **dict(model_args, **kwargs))


@register_model
def od_mobilenetv2_100(pretrained: bool = False, **kwargs) -> MobileNetV2:
    """MobileNetV2 (1.0x), ODConv in every conv but the stem."""
    model_args = dict(width_mult=1.0)
    return _create_mobilenetv2("od_mobilenetv2_100", "od", pretrained, **dict(model_args, **kwargs))


# CondConv
@register_model
def condconv_resnet18(pretrained: bool = False, **kwargs) -> ResNet:
    """ResNet18, CondConv in every residual-block conv."""
    model_args = dict(depth=18)
    return _create_resnet("condconv_resnet18", "condconv", pretrained, **dict(model_args, **kwargs))


@register_model
def condconv_resnet34(pretrained: bool = False, **kwargs) -> ResNet:
    """ResNet34, CondConv in every residual-block conv."""
    model_args = dict(depth=34)
    return _create_resnet("condconv_resnet34", "condconv", pretrained, **dict(model_args, **kwargs))


@register_model
def condconv_resnet50(pretrained: bool = False, **kwargs) -> ResNet:
    """ResNet50, CondConv in every residual-block conv."""
    model_args = dict(depth=50)
    return _create_resnet("condconv_resnet50", "condconv", pretrained, **dict(model_args, **kwargs))


@register_model
def condconv_resnet101(pretrained: bool = False, **kwargs) -> ResNet:
    """ResNet101, CondConv in every residual-block conv."""
    model_args = dict(depth=101)
    return _create_resnet("condconv_resnet101", "condconv", pretrained, **dict(model_args, **kwargs))


@register_model
def condconv_mobilenetv2_050(pretrained: bool = False, **kwargs) -> MobileNetV2:
    """MobileNetV2 (0.5x), CondConv in every conv but the stem."""
    model_args = dict(width_mult=0.5)
    return _create_mobilenetv2("condconv_mobilenetv2_050", "condconv", pretrained, **dict(model_args, **kwargs))


@register_model
def condconv_mobilenetv2_075(pretrained: bool = False, **kwargs) -> MobileNetV2:
    """MobileNetV2 (0.75x), CondConv in every conv but the stem."""
    model_args = dict(width_mult=0.75)
    return _create_mobilenetv2("condconv_mobilenetv2_075", "condconv", pretrained, **dict(model_args, **kwargs))


@register_model
def condconv_mobilenetv2_100(pretrained: bool = False, **kwargs) -> MobileNetV2:
    """MobileNetV2 (1.0x), CondConv in every conv but the stem."""
    model_args = dict(width_mult=1.0)
    return _create_mobilenetv2("condconv_mobilenetv2_100", "condconv", pretrained, **dict(model_args, **kwargs))


# DyConv
@register_model
def dyconv_resnet18(pretrained: bool = False, **kwargs) -> ResNet:
    """ResNet18, DyConv in every residual-block conv."""
    model_args = dict(depth=18)
    return _create_resnet("dyconv_resnet18", "dyconv", pretrained, **dict(model_args, **kwargs))


@register_model
def dyconv_resnet34(pretrained: bool = False, **kwargs) -> ResNet:
    """ResNet34, DyConv in every residual-block conv."""
    model_args = dict(depth=34)
    return _create_resnet("dyconv_resnet34", "dyconv", pretrained, **dict(model_args, **kwargs))


@register_model
def dyconv_resnet50(pretrained: bool = False, **kwargs) -> ResNet:
    """ResNet50, DyConv in every residual-block conv."""
    model_args = dict(depth=50)
    return _create_resnet("dyconv_resnet50", "dyconv", pretrained, **dict(model_args, **kwargs))


@register_model
def dyconv_resnet101(pretrained: bool = False, **kwargs) -> ResNet:
    """ResNet101, DyConv in every residual-block conv."""
    model_args = dict(depth=101)
    return _create_resnet("dyconv_resnet101", "dyconv", pretrained, **dict(model_args, **kwargs))


@register_model
def dyconv_mobilenetv2_050(pretrained: bool = False, **kwargs) -> MobileNetV2:
    """MobileNetV2 (0.5x), DyConv in every conv but the stem."""
    model_args = dict(width_mult=0.5)
    return _create_mobilenetv2("dyconv_mobilenetv2_050", "dyconv", pretrained, **dict(model_args, **kwargs))


@register_model
def dyconv_mobilenetv2_075(pretrained: bool = False, **kwargs) -> MobileNetV2:
    """MobileNetV2 (0.75x), DyConv in every conv but the stem."""
    model_args = dict(width_mult=0.75)
    return _create_mobilenetv2("dyconv_mobilenetv2_075", "dyconv", pretrained, **dict(model_args, **kwargs))


@register_model
def dyconv_mobilenetv2_100(pretrained: bool = False, **kwargs) -> MobileNetV2:
    """MobileNetV2 (1.0x), DyConv in every conv but the stem."""
    model_args = dict(width_mult=1.0)
    return _create_mobilenetv2("dyconv_mobilenetv2_100", "dyconv", pretrained, **dict(model_args, **kwargs))


# Static
@register_model
def static_resnet18(pretrained: bool = False, **kwargs) -> ResNet:
    """ResNet18, plain convs (the baseline)."""
    model_args = dict(depth=18)
    return _create_resnet("static_resnet18", None, pretrained, **dict(model_args, **kwargs))


@register_model
def static_resnet34(pretrained: bool = False, **kwargs) -> ResNet:
    """ResNet34, plain convs (the baseline)."""
    model_args = dict(depth=34)
    return _create_resnet("static_resnet34", None, pretrained, **dict(model_args, **kwargs))


@register_model
def static_resnet50(pretrained: bool = False, **kwargs) -> ResNet:
    """ResNet50, plain convs (the baseline)."""
    model_args = dict(depth=50)
    return _create_resnet("static_resnet50", None, pretrained, **dict(model_args, **kwargs))


@register_model
def static_resnet101(pretrained: bool = False, **kwargs) -> ResNet:
    """ResNet101, plain convs (the baseline)."""
    model_args = dict(depth=101)
    return _create_resnet("static_resnet101", None, pretrained, **dict(model_args, **kwargs))


@register_model
def static_mobilenetv2_050(pretrained: bool = False, **kwargs) -> MobileNetV2:
    """MobileNetV2 (0.5x), plain convs (the baseline)."""
    model_args = dict(width_mult=0.5)
    return _create_mobilenetv2("static_mobilenetv2_050", None, pretrained, **dict(model_args, **kwargs))


@register_model
def static_mobilenetv2_075(pretrained: bool = False, **kwargs) -> MobileNetV2:
    """MobileNetV2 (0.75x), plain convs (the baseline)."""
    model_args = dict(width_mult=0.75)
    return _create_mobilenetv2("static_mobilenetv2_075", None, pretrained, **dict(model_args, **kwargs))


@register_model
def static_mobilenetv2_100(pretrained: bool = False, **kwargs) -> MobileNetV2:
    """MobileNetV2 (1.0x), plain convs (the baseline)."""
    model_args = dict(width_mult=1.0)
    return _create_mobilenetv2("static_mobilenetv2_100", None, pretrained, **dict(model_args, **kwargs))


# DCD: the released networks. Builder kwargs besides timm's: dropout (drop_rate), and for the ResNets the DCD conv's
# pool_size (released: 2 in the BasicBlock nets, 1 in the Bottleneck nets) and fc_squeeze (16) and dynamic_stages;
# for MobileNetV2 fc_squeeze (16, the released commands' value).
DCD_DROPOUT = {"resnet50": 0.1, "mobilenetv2_100": 0.2}  # the released training commands' --dropout


def _create_dcd(variant: str, pretrained: bool, **kwargs):
    if pretrained:
        raise ValueError(
            f"{variant}: no weights can be downloaded here; build with pretrained=False and use "
            "models.load_checkpoint(model, path) with a local checkpoint (the released .pth.tar loads as it is)"
        )
    arch = variant[len("dcd_"):]
    # The released scripts give no dropout for ResNet18/34/101; the ResNet50 command's 0.1 stands for them.
    dropout = _pop_dropout(kwargs, DCD_DROPOUT.get(arch, 0.1))
    if arch.startswith("resnet"):
        depth = int(arch[len("resnet"):])
        layer = dict(pool_size=2 if depth < 50 else 1)
        layer.update({k: kwargs.pop(k) for k in ("pool_size", "fc_squeeze") if k in kwargs})
        return build_model_with_cfg(
            DCDResNet, variant, pretrained, depth=depth, conv=DynamicConvFactory("dcd", **layer), dropout=dropout,
            feature_cfg=dict(flatten_sequential=False, out_indices=(0, 1, 2, 3)), **kwargs,
        )
    return build_model_with_cfg(
        DCDMobileNetV2, variant, pretrained, width_mult=1.0, dropout=dropout,
        feature_cfg=dict(flatten_sequential=True, out_indices=(0, 1, 2, 3)), **kwargs,
    )


@register_model
def dcd_resnet18(pretrained: bool = False, **kwargs) -> DCDResNet:
    """ResNet18, DCD (pooled variant) in every residual-block conv, dynamic classifier (released resnet18_dcd)."""
    return _create_dcd("dcd_resnet18", pretrained, **kwargs)


@register_model
def dcd_resnet34(pretrained: bool = False, **kwargs) -> DCDResNet:
    """ResNet34, DCD (pooled variant) in every residual-block conv, dynamic classifier (released resnet34_dcd)."""
    return _create_dcd("dcd_resnet34", pretrained, **kwargs)


@register_model
def dcd_resnet50(pretrained: bool = False, **kwargs) -> DCDResNet:
    """ResNet50, DCD in every residual-block conv, dynamic classifier (released resnet50_dcd)."""
    return _create_dcd("dcd_resnet50", pretrained, **kwargs)


@register_model
def dcd_resnet101(pretrained: bool = False, **kwargs) -> DCDResNet:
    """ResNet101, DCD in every residual-block conv, dynamic classifier (released resnet101_dcd)."""
    return _create_dcd("dcd_resnet101", pretrained, **kwargs)


@register_model
def dcd_mobilenetv2_100(pretrained: bool = False, **kwargs) -> DCDMobileNetV2:
    """MobileNetV2 (1.0x), DCD in the pw and pw-linear convs of the expanding blocks, dynamic classifier
    (released mobilenetv2_dcd)."""
    return _create_dcd("dcd_mobilenetv2_100", pretrained, **kwargs)


MODEL_NAMES = tuple(p + a for p in PREFIXES.values() for a in ARCHS)
BUILDERS = {name: globals()[name] for name in MODEL_NAMES + DCD_MODEL_NAMES}
