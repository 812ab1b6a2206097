"""ODConv: omni-dimensional dynamic convolution (Li, Zhou, Yao, ICLR 2022). Depends on torch only."""
from .attention import Attentions, ODAttention
from .conv import ODConv2d
from .convert import convert
from .dispatch import explain, format_explain, use_formulation
from .formulations import FORMULATIONS
from .functional import odconv2d
from .temperature import set_temperature, temperature_schedule

__all__ = [
    "FORMULATIONS", "Attentions", "ODAttention", "ODConv2d", "convert", "explain", "format_explain", "odconv2d",
    "set_temperature", "temperature_schedule", "use_formulation",
]
