"""MMDetection 3.x bridge: the zoo's ODConv, KernelWarehouse and static backbones in mmdet's registry, a COCO
metric with the standard 12 numbers, the attention-temperature and KernelWarehouse tau hooks, and the fixes this
mmengine/mmcv/mmdet stack needs on current torch.

Importing `detection` loads nothing from the detection stack, so the commands can first say in one line how to
install it when it is missing. Configs register the modules with
`custom_imports = dict(imports=['detection.plugins'], allow_failed_imports=False)`; `detection.ODResNet` and the
other backbone classes are loaded on first use.
"""
from __future__ import annotations

_BACKBONES = ("KWMobileNetV2", "KWResNet", "ODMobileNetV2", "ODResNet", "StaticMobileNetV2", "StaticResNet",
              "ZooBackbone")


def __getattr__(name: str):
    if name in _BACKBONES:
        from .stack import missing_stack

        message = missing_stack()
        if message is not None:
            raise ImportError(message)
        from . import plugins

        return getattr(plugins, name)
    raise AttributeError(f"module 'detection' has no attribute {name!r}")


__all__ = list(_BACKBONES)
