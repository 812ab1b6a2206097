"""ODConv: omni-dimensional dynamic convolution (Li, Zhou, Yao, ICLR 2022), and CondConv and DyConv on the same
code path; DCD, the low-rank member, beside them. Depends on torch only."""
from . import tuning
from .attention import Attentions, ODAttention
from .condconv import CondConv2d, CondConvRouting
from .conv import DynamicConv2d, ODConv2d
from .convert import convert
from .dcd import DCD_LAYERS, DCDConv2d, DCDLinear, DCDModule
from .dispatch import get_dispatch, set_dispatch, use_formulation
from .dyconv import DyConv2d, DyConvAttention
from .explain import explain, format_explain
from .factory import DYNAMIC_CONVS, create_dynamic_conv
from .formulations import FORMULATIONS
from .functional import odconv2d
from .temperature import set_temperature, temperature_schedule

__all__ = [
    "DCD_LAYERS", "DYNAMIC_CONVS", "FORMULATIONS", "Attentions", "CondConv2d", "CondConvRouting", "DCDConv2d",
    "DCDLinear", "DCDModule", "DyConv2d", "DyConvAttention",
    "DynamicConv2d", "ODAttention", "ODConv2d", "convert", "create_dynamic_conv", "explain", "format_explain",
    "get_dispatch", "odconv2d", "set_dispatch", "set_temperature", "temperature_schedule", "tuning",
    "use_formulation",
]
