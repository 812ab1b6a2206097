"""ODConv: omni-dimensional dynamic convolution (Li, Zhou, Yao, ICLR 2022), and CondConv and DyConv on the same
code path. Depends on torch only."""
from .attention import Attentions, ODAttention
from .condconv import CondConv2d, CondConvRouting
from .conv import DynamicConv2d, ODConv2d
from .convert import convert
from .dispatch import explain, format_explain, use_formulation
from .dyconv import DyConv2d, DyConvAttention
from .factory import DYNAMIC_CONVS, create_dynamic_conv
from .formulations import FORMULATIONS
from .functional import odconv2d
from .temperature import set_temperature, temperature_schedule

__all__ = [
    "DYNAMIC_CONVS", "FORMULATIONS", "Attentions", "CondConv2d", "CondConvRouting", "DyConv2d", "DyConvAttention",
    "DynamicConv2d", "ODAttention", "ODConv2d", "convert", "create_dynamic_conv", "explain", "format_explain",
    "odconv2d", "set_temperature", "temperature_schedule", "use_formulation",
]
