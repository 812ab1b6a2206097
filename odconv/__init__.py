"""ODConv: omni-dimensional dynamic convolution (Li, Zhou, Yao, ICLR 2022). Depends on torch only."""
from . import tuning
from .attention import Attentions, ODAttention
from .conv import ODConv2d
from .convert import convert
from .dispatch import get_dispatch, set_dispatch, use_formulation
from .explain import explain, format_explain
from .formulations import FORMULATIONS
from .functional import odconv2d
from .temperature import set_temperature, temperature_schedule

__all__ = [
    "FORMULATIONS", "Attentions", "ODAttention", "ODConv2d", "convert", "explain", "format_explain", "odconv2d",
    "set_temperature", "temperature_schedule", "use_formulation", "get_dispatch", "set_dispatch", "tuning",
]
