"""FDConv networks: the zoo's static ResNet converted by `odconv.convert_to_fdconv`, as the released FDConv does it.

Chen et al. "Frequency Dynamic Convolution for Dense Image Prediction." CVPR 2025 (github.com/Linwei-Chen/FDConv).
The release has no classification network of its own: its ResNet is the static one with every conv that passes
FDConv's gate (min(C_in, C_out) > 16 and kernel 1 or 3) made an `FDConv2d` started from the static kernel; the stem
and the strided shortcuts stay static. So these builders build `static_<arch>` and convert it (no architecture of
their own); the detection bridge's `FD_ResNet` does the same to its backbone.

Builder kwargs besides the static builder's: `kernel_num` (frequency groups per layer; 64, the released configs'
value), `gate_init` ("released", the default, or "exact": see `odconv.fdconv_convert`).
"""
from __future__ import annotations

from timm.models import generate_default_cfgs, register_model

from odconv import convert_to_fdconv

from .registry import BUILDERS, _cfg
from .resnet import ResNet

FD_ARCHS = ("resnet18", "resnet50")
FD_MODEL_NAMES = tuple("fd_" + a for a in FD_ARCHS)
FD_KERNEL_NUM = 64  # the released detection configs' kernel_num (the layer's own default is 4)

default_cfgs = generate_default_cfgs({name: _cfg("conv1", "fc") for name in FD_MODEL_NAMES})


def _create_fd(variant: str, pretrained: bool, kernel_num: int = FD_KERNEL_NUM, gate_init: str = "released",
               **kwargs) -> ResNet:
    if pretrained:
        raise ValueError(f"{variant}: no weights can be downloaded here; build with pretrained=False and load a static "
                         "or FDConv checkpoint with models.load_checkpoint")
    model = BUILDERS["static_" + variant[len("fd_"):]](**kwargs)
    convert_to_fdconv(model, gate_init=gate_init, kernel_num=kernel_num)
    model.pretrained_cfg = dict(model.pretrained_cfg, architecture=variant)
    return model


@register_model
def fd_resnet18(pretrained: bool = False, **kwargs) -> ResNet:
    """ResNet18 with FDConv in every block conv that passes its gate (stem and shortcuts static)."""
    return _create_fd("fd_resnet18", pretrained, **kwargs)


@register_model
def fd_resnet50(pretrained: bool = False, **kwargs) -> ResNet:
    """ResNet50 with FDConv in every block conv that passes its gate (stem and shortcuts static)."""
    return _create_fd("fd_resnet50", pretrained, **kwargs)


FD_BUILDERS = {"fd_resnet18": fd_resnet18, "fd_resnet50": fd_resnet50}
