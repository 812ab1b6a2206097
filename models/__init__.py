"""The paper's backbone zoo (ResNet18/34/50/101, MobileNetV2 0.5/0.75/1.0; static, ODConv, CondConv, DyConv),
KernelWarehouse's ResNet18/50, MobileNetV2 0.5/1.0 and ConvNeXt-T (and its static twin), the released DCD networks
and FDConv's converted ResNet18/50, registered with timm, and the one parameter/MAC counter (models.complexity)."""
from . import published
from .checkpoint import CheckpointMismatchError, extract_state_dict, load_checkpoint, load_state_dict_checked, read_state_dict
from .complexity import count_params
from .convnext import ConvNeXt, static_convnext_tiny
from .dcd import DCDMobileNetV2, DCDResNet
from .fd import FD_BUILDERS, FD_MODEL_NAMES
from .kw import KW_BUILDERS, KW_MODEL_NAMES
from .mobilenetv2 import MobileNetV2
from .registry import BUILDERS, DCD_MODEL_NAMES, MODEL_NAMES
from .resnet import ResNet

globals().update(BUILDERS)
globals().update(FD_BUILDERS)
globals().update(KW_BUILDERS)  # models.od_resnet50(kernel_num=4) as well as timm.create_model("od_resnet50", ...)

__all__ = [
    "BUILDERS", "DCD_MODEL_NAMES", "FD_BUILDERS", "FD_MODEL_NAMES", "KW_BUILDERS", "KW_MODEL_NAMES", "MODEL_NAMES",
    "CheckpointMismatchError", "ConvNeXt", "DCDMobileNetV2", "DCDResNet", "MobileNetV2", "ResNet", "count_params",
    "extract_state_dict", "load_checkpoint", "load_state_dict_checked", "published", "read_state_dict",
    "static_convnext_tiny", *BUILDERS, *FD_BUILDERS, *KW_BUILDERS,
]
