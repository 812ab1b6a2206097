"""MMDetection 3.x bridge: the zoo's ODConv and static backbones in mmdet's registry, a COCO metric with the
standard 12 numbers, and the fixes this mmengine/mmcv/mmdet stack needs on current torch.

Configs load it with `custom_imports = dict(imports=['detection'], allow_failed_imports=False)`.
"""
from . import compat  # noqa: F401  (first: patches mmengine before anything loads a checkpoint)
from .backbones import ODMobileNetV2, ODResNet, StaticMobileNetV2, StaticResNet, ZooBackbone, count_parameters
from .metrics import StandardCocoMetric

__all__ = [
    "ODMobileNetV2", "ODResNet", "StandardCocoMetric", "StaticMobileNetV2", "StaticResNet", "ZooBackbone",
    "count_parameters",
]
