"""ODConv: omni-dimensional dynamic convolution (Li, Zhou, Yao, ICLR 2022), and CondConv, DyConv and
KernelWarehouse (Li, Yao, ICML 2024) on the same code path. Depends on torch only."""
from . import tuning
from .attention import Attentions, ODAttention
from .condconv import CondConv2d, CondConvRouting
from .conv import DynamicConv2d, ODConv2d
from .convert import convert
from .dispatch import get_dispatch, set_dispatch, use_formulation
from .dyconv import DyConv2d, DyConvAttention
from .explain import explain, format_explain
from .factory import DYNAMIC_CONVS, create_dynamic_conv
from .formulations import FORMULATIONS
from .functional import odconv2d
from .kernelwarehouse import KWAttention, KWConv1d, KWConv2d, KWConv3d, KWConvNd, KWLinear
from .temperature import final_temperature, set_temperature, temperature_schedule
from .warehouse import WarehouseManager, build_warehouses

__all__ = [
    "DYNAMIC_CONVS", "FORMULATIONS", "Attentions", "CondConv2d", "CondConvRouting", "DyConv2d", "DyConvAttention",
    "DynamicConv2d", "KWAttention", "KWConv1d", "KWConv2d", "KWConv3d", "KWConvNd", "KWLinear", "ODAttention",
    "ODConv2d", "WarehouseManager", "build_warehouses", "convert", "create_dynamic_conv", "explain",
    "final_temperature", "format_explain", "get_dispatch", "odconv2d", "set_dispatch", "set_temperature",
    "temperature_schedule", "tuning", "use_formulation",
]
