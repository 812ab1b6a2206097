"""What mmdet configs import (`custom_imports = dict(imports=['detection.plugins'])`): registers the zoo's
backbones, `StandardCocoMetric` and `ODConvTemperatureHook` with mmdet's registries."""
from . import compat  # noqa: F401  (first: patches mmengine before anything loads a checkpoint)
from .backbones import FDResNet, ODMobileNetV2, ODResNet, StaticMobileNetV2, StaticResNet, ZooBackbone
from .hooks import ODConvTemperatureHook
from .metrics import StandardCocoMetric

__all__ = [
    "FDResNet", "ODConvTemperatureHook", "ODMobileNetV2", "ODResNet", "StandardCocoMetric", "StaticMobileNetV2", "StaticResNet",
    "ZooBackbone",
]
