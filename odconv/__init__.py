"""ODConv: omni-dimensional dynamic convolution (Li, Zhou, Yao, ICLR 2022), and CondConv and DyConv on the same
code path; FDConv (frequency dynamic convolution, CVPR 2025) beside them. Depends on torch only."""
from . import tuning
from .attention import Attentions, ODAttention
from .condconv import CondConv2d, CondConvRouting
from .conv import DynamicConv2d, ODConv2d
from .convert import convert
from .dispatch import get_dispatch, set_dispatch, use_formulation
from .dyconv import DyConv2d, DyConvAttention
from .explain import explain, format_explain
from .factory import DYNAMIC_CONVS, create_dynamic_conv
from .fdconv import FDConv2d
from .fdconv_convert import (
    convert_to_fdconv,
    released_fdconv_state_dict,
    static_to_fdconv_state_dict,
)
from .formulations import FORMULATIONS
from .functional import odconv2d
from .temperature import set_temperature, temperature_schedule

__all__ = [
    "DYNAMIC_CONVS", "FORMULATIONS", "Attentions", "CondConv2d", "CondConvRouting", "DyConv2d", "DyConvAttention",
    "DynamicConv2d", "FDConv2d", "ODAttention", "ODConv2d", "convert", "convert_to_fdconv", "create_dynamic_conv",
    "explain", "format_explain", "get_dispatch", "odconv2d", "released_fdconv_state_dict", "set_dispatch",
    "set_temperature", "static_to_fdconv_state_dict", "temperature_schedule", "tuning", "use_formulation",
]
