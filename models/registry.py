"""timm registration of the zoo: `timm.create_model("od_resnet50", kernel_num=4)` after `import models`.

Static twins are registered as `static_*` so they never replace timm's own `resnet50` or `mobilenetv2_100`.
"""
from __future__ import annotations

from typing import Any, Callable

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model

from .layers import ODConvFactory, static_conv
from .mobilenetv2 import MobileNetV2
from .resnet import ResNet


def _cfg(first_conv: str, classifier: str) -> dict[str, Any]:
    # The released training recipe: 224 crops from 256 resizes (crop_pct 0.875), bilinear, ImageNet mean/std.
    return dict(
        num_classes=1000, input_size=(3, 224, 224), pool_size=(7, 7), crop_pct=0.875, interpolation="bilinear",
        mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD, first_conv=first_conv, classifier=classifier,
        license="mit",
    )


_RESNETS = {"resnet18": 18, "resnet34": 34, "resnet50": 50, "resnet101": 101}
_MOBILENETS = {"mobilenetv2_050": 0.5, "mobilenetv2_075": 0.75, "mobilenetv2_100": 1.0}

default_cfgs = generate_default_cfgs(
    {f"{p}{a}": _cfg("conv1", "fc") for p in ("od_", "static_") for a in _RESNETS}
    | {f"{p}{a}": _cfg("features.0.0", "classifier.1") for p in ("od_", "static_") for a in _MOBILENETS}
)


def _pop_dropout(kwargs: dict[str, Any], default: float) -> float:
    """Accept the zoo's `dropout` and timm's `drop_rate`; giving both is ambiguous."""
    if "dropout" in kwargs and "drop_rate" in kwargs:
        raise ValueError("give either dropout or drop_rate, not both")
    return kwargs.pop("dropout", kwargs.pop("drop_rate", default))


def _build(cls: Callable, variant: str, pretrained: bool, od: bool, arch_kwargs: dict, kwargs: dict):
    if pretrained:
        raise ValueError(
            f"{variant}: no weights can be downloaded here; build with pretrained=False and use "
            "models.load_checkpoint(model, path) with a local checkpoint"
        )
    default_dropout = 0.2 if cls is MobileNetV2 else (0.1 if od else 0.0)
    dropout = _pop_dropout(kwargs, default_dropout)
    if od:
        conv = ODConvFactory(kernel_num=kwargs.pop("kernel_num", 1), reduction=kwargs.pop("reduction", 0.0625))
    else:
        for key in ("kernel_num", "reduction"):
            if key in kwargs:
                raise ValueError(f"{variant} is a static model and takes no {key}; use od_{variant[7:]}")
        conv = static_conv
    return build_model_with_cfg(
        cls, variant, pretrained, conv=conv, dropout=dropout, **arch_kwargs, **kwargs,
        # MobileNetV2's stages live inside one `features` Sequential, so timm must flatten it to find them.
        feature_cfg=dict(flatten_sequential=cls is MobileNetV2, out_indices=(0, 1, 2, 3)),
    )


def _register(variant: str, cls: Callable, od: bool, arch_kwargs: dict) -> Callable:
    def builder(pretrained: bool = False, **kwargs):
        return _build(cls, variant, pretrained, od, arch_kwargs, kwargs)

    builder.__name__ = builder.__qualname__ = variant
    builder.__module__ = __name__
    builder.__doc__ = f"{variant}: {'ODConv' if od else 'static'} {cls.__name__} ({arch_kwargs})."
    return register_model(builder)


BUILDERS: dict[str, Callable] = {}
for _arch, _depth in _RESNETS.items():
    for _od in (True, False):
        _name = ("od_" if _od else "static_") + _arch
        BUILDERS[_name] = _register(_name, ResNet, _od, dict(depth=_depth))
for _arch, _width in _MOBILENETS.items():
    for _od in (True, False):
        _name = ("od_" if _od else "static_") + _arch
        BUILDERS[_name] = _register(_name, MobileNetV2, _od, dict(width_mult=_width))

MODEL_NAMES = tuple(BUILDERS)
