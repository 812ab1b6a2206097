"""ODConv: omni-dimensional dynamic convolution (Li, Zhou, Yao, ICLR 2022), and CondConv, DyConv and
KernelWarehouse (Li, Yao, ICML 2024) on the same code path, in 1, 2 and 3 spatial dimensions; DCD, the low-rank
member, and FDConv (frequency dynamic convolution, CVPR 2025) beside them. Depends on torch only."""
from . import tuning
from .attention import Attentions, ODAttention
from .condconv import CondConv1d, CondConv2d, CondConv3d, CondConvNd, CondConvRouting
from .conv import (DynamicConv1d, DynamicConv2d, DynamicConv3d, DynamicConvNd, ODConv1d, ODConv2d, ODConv3d,
                   ODConvNd)
from .convert import convert
from .dcd import DCD_LAYERS, DCDConv2d, DCDLinear, DCDModule
from .dispatch import get_dispatch, set_dispatch, use_formulation
from .dyconv import DyConv1d, DyConv2d, DyConv3d, DyConvAttention, DyConvNd
from .explain import explain, format_explain
from .factory import DYNAMIC_CONVS, create_dynamic_conv
from .fdconv import FDConv2d
from .fdconv_convert import (
    convert_to_fdconv,
    released_fdconv_state_dict,
    static_to_fdconv_state_dict,
)
from .formulations import FORMULATIONS
from .functional import odconv1d, odconv2d, odconv3d
from .kernelwarehouse import KWAttention, KWConv1d, KWConv2d, KWConv3d, KWConvNd, KWLinear
from .temperature import final_temperature, set_temperature, temperature_schedule
from .warehouse import WarehouseManager, build_warehouses

__all__ = [
    "DCD_LAYERS", "DYNAMIC_CONVS", "FORMULATIONS", "Attentions", "CondConv1d", "CondConv2d", "CondConv3d",
    "CondConvNd", "CondConvRouting", "DCDConv2d", "DCDLinear", "DCDModule", "DyConv1d", "DyConv2d", "DyConv3d",
    "DyConvAttention", "DyConvNd", "DynamicConv1d", "DynamicConv2d", "DynamicConv3d", "DynamicConvNd", "FDConv2d",
    "KWAttention", "KWConv1d", "KWConv2d", "KWConv3d", "KWConvNd", "KWLinear", "ODAttention", "ODConv1d",
    "ODConv2d", "ODConv3d", "ODConvNd", "WarehouseManager", "build_warehouses", "convert", "convert_to_fdconv",
    "create_dynamic_conv", "explain", "final_temperature", "format_explain", "get_dispatch", "odconv1d",
    "odconv2d", "odconv3d", "released_fdconv_state_dict", "set_dispatch", "set_temperature",
    "static_to_fdconv_state_dict", "temperature_schedule", "tuning", "use_formulation",
]
