"""What mmdet configs import (`custom_imports = dict(imports=['detection.plugins'])`): registers the zoo's
backbones, `StandardCocoMetric`, `ODConvTemperatureHook` and `KWTauHook` with mmdet's registries."""
from . import compat  # noqa: F401  (first: patches mmengine before anything loads a checkpoint)
from .backbones import (FDResNet, KWMobileNetV2, KWResNet, ODMobileNetV2, ODResNet, StaticMobileNetV2, StaticResNet,
                        ZooBackbone)
from .hooks import KWTauHook, ODConvTemperatureHook
from .metrics import StandardCocoMetric

__all__ = [
    "FDResNet", "KWMobileNetV2", "KWResNet", "KWTauHook", "ODConvTemperatureHook", "ODMobileNetV2", "ODResNet",
    "StandardCocoMetric", "StaticMobileNetV2", "StaticResNet", "ZooBackbone",
]
