"""`FDConv2d`: Frequency Dynamic Convolution (Chen, Gu, Li, Yan, Fu, CVPR 2025, arXiv 2503.18783), the 2-D layer
as released (github.com/Linwei-Chen/FDConv, FDConv_detection/mmdet_custom/FDConv.py), written anew.

The layer holds one parameter set, `dft_weight` (param_ratio, C_out*k, C_in*k//2+1, 2): the real 2-D Fourier
transform of the kernel read as a (C_out*k) x (C_in*k) matrix, divided by min(C_in, C_out)//2. Its frequencies are
sorted by radius and cut into `kernel_num` disjoint bands ("Fourier disjoint weight"); per sample each band is
scaled by its gate from the global kernel spatial modulation, the spectrum goes back to a (C_out, C_in, k, k)
kernel by the inverse FFT, and that kernel is modulated by the global spatial, channel and filter gates and by the
dense local gate. For 3x3 layers the input first passes the frequency band modulation. Layers that fail the gate
(min(C_in, C_out) <= `use_fdconv_if_c_gt` or k not in `use_fdconv_if_k_in`) are plain `nn.Conv2d`s, as released.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .formulations.grouped import data_tap_box
from .fdconv_modules import (
    GATE_ACTS,
    FrequencyBandModulation,
    KernelSpatialModulation_Global,
    KernelSpatialModulation_Local,
    gate,
    radial_order,
)

IntOrPair = Union[int, tuple[int, int]]
GATE_INITS = ("released", "exact")
_FBM_KEYS = {"k_list", "lowfreq_att", "spatial_kernel"}
# Released fbm_cfg entries that only take their default value here (other values are not implemented).
_FBM_FIXED = {"fs_feat": "feat", "act": "sigmoid", "spatial": "conv", "spatial_group": 1, "init": "zero",
              "global_selection": False}


def dft_weight_from_weight(weight: Tensor, param_ratio: int = 1) -> Tensor:
    """The released conversion of a static (C_out, C_in, k, k) kernel to `dft_weight`: rfft2 of the
    (C_out*k, C_in*k) matrix (rows: output channel then kernel row; columns: input channel then kernel column),
    real and imaginary parts stacked last, repeated `param_ratio` times, divided by min(C_out, C_in)//2."""
    cout, cin, kh, kw = weight.shape
    matrix = weight.permute(0, 2, 1, 3).reshape(cout * kh, cin * kw)
    spectrum = torch.fft.rfft2(matrix)
    stacked = torch.stack([spectrum.real, spectrum.imag], dim=-1)
    return stacked.unsqueeze(0).repeat(param_ratio, 1, 1, 1) / (min(cout, cin) // 2)


def fdconv_applies(in_channels: int, out_channels: int, kernel_size: IntOrPair, groups: int = 1,
                   use_fdconv_if_c_gt: int = 16, use_fdconv_if_k_in: Sequence[int] = (1, 3)) -> bool:
    """The released gate: min(C_in, C_out) > use_fdconv_if_c_gt and a kernel size in use_fdconv_if_k_in. Grouped
    convs stay static too: the released layer builds a dense kernel and cannot run them."""
    kh, kw = (kernel_size, kernel_size) if isinstance(kernel_size, int) else kernel_size
    return min(in_channels, out_channels) > use_fdconv_if_c_gt and kh in use_fdconv_if_k_in and kh == kw \
        and groups == 1


class FDConv2d(nn.Conv2d):
    """Frequency dynamic convolution; a drop-in `nn.Conv2d` (the released `FDConv`, mmcv's "FDConv").

    Arguments beyond `nn.Conv2d`'s are the released ones (defaults as released; its detection configs use
    kernel_num=64). `gate_init="released"` keeps the released initialisation, under which the filter gate starts
    as a random factor (see `KernelSpatialModulation_Global`); `gate_init="exact"` starts every gate at exactly 1,
    so a layer whose `dft_weight` comes from a static kernel computes that conv (up to rounding) at
    initialisation. `convert_param=False` keeps the static `weight` as the parameter and transforms it each call.
    `use_fdconv_if_stride_in`, `param_reduction`, `spatial_freq_decompose` and `linear_mode` are accepted so that
    the released configs build; the last three only at their defaults (1.0, False, False).
    """

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: IntOrPair, stride: IntOrPair = 1,
        padding: Union[str, IntOrPair] = 0, dilation: IntOrPair = 1, groups: int = 1, bias: bool = True,
        padding_mode: str = "zeros", *, reduction: float = 0.0625, kernel_num: Optional[int] = 4,
        use_fdconv_if_c_gt: int = 16, use_fdconv_if_k_in: Sequence[int] = (1, 3), use_fbm_if_k_in: Sequence[int] = (3,),
        use_fbm_for_stride: bool = False, kernel_temp: float = 1.0, temp: Optional[float] = None,
        att_multi: float = 2.0, param_ratio: int = 1, ksm_only_kernel_att: bool = False, use_ksm_local: bool = True,
        ksm_local_act: str = "sigmoid", ksm_global_act: str = "sigmoid", convert_param: bool = True,
        fbm_cfg: Optional[dict[str, Any]] = None, gate_init: str = "released", use_fdconv_if_stride_in=(1,),
        param_reduction: float = 1.0, spatial_freq_decompose: bool = False, linear_mode: bool = False,
        device=None, dtype=None,
    ) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias,
                         padding_mode, device=device, dtype=dtype)
        # Released arguments taken at their released (and detection configs') values only; the release stores
        # use_fdconv_if_stride_in without reading it.
        fixed = {"param_reduction": (param_reduction, 1.0), "spatial_freq_decompose": (spatial_freq_decompose, False),
                 "linear_mode": (linear_mode, False)}
        other = sorted(name for name, (value, default) in fixed.items() if value != default)
        if other:
            raise ValueError(f"FDConv2d implements {other} only at their defaults {[fixed[n][1] for n in other]}")
        if gate_init not in GATE_INITS:
            raise ValueError(f"gate_init must be one of {GATE_INITS}, got {gate_init!r}")
        if ksm_local_act not in GATE_ACTS:
            raise ValueError(f"ksm_local_act must be one of {GATE_ACTS}, got {ksm_local_act!r}")
        if kernel_num is None:  # released: half the output channels, with a matching temperature
            kernel_num = out_channels // 2
            kernel_temp = (kernel_num * param_ratio) ** 0.5
        self.kernel_num, self.param_ratio, self.att_multi = kernel_num, param_ratio, att_multi
        self.use_fdconv_if_c_gt, self.use_fdconv_if_k_in = use_fdconv_if_c_gt, tuple(use_fdconv_if_k_in)
        self.use_ksm_local, self.ksm_local_act, self.gate_init = use_ksm_local, ksm_local_act, gate_init
        self.is_dynamic = fdconv_applies(in_channels, out_channels, self.kernel_size, groups, use_fdconv_if_c_gt,
                                         use_fdconv_if_k_in)
        if not self.is_dynamic:
            return
        k = self.kernel_size[0]
        rows, cols = out_channels * k, in_channels * k
        bands = kernel_num * param_ratio
        exact = gate_init == "exact"
        if exact and param_ratio != 1:
            raise ValueError("gate_init='exact' needs param_ratio=1 (the released layer's kernel at gate 1 is "
                             "param_ratio times the static one)")
        if rows * (cols // 2 + 1) % kernel_num:
            raise ValueError(f"kernel_num={kernel_num} must divide the {rows}x{cols // 2 + 1} spectrum of a "
                             f"{in_channels}->{out_channels} k={k} conv")
        fk = dict(device=device, dtype=dtype)
        # alpha undoes dft_weight's 1/(min//2) and the band gates' 1/bands: at gate 1 the kernel is the static one.
        self.alpha = min(out_channels, in_channels) // 2 * kernel_num * param_ratio
        self.KSM_Global = KernelSpatialModulation_Global(
            in_channels, out_channels, k, reduction=reduction, kernel_num=bands, temp=kernel_temp if temp is None
            else temp, kernel_temp=kernel_temp, att_multi=att_multi, ksm_only_kernel_att=ksm_only_kernel_att,
            act_type=ksm_global_act, exact_init=exact, **fk)
        if k in use_fbm_if_k_in or (use_fbm_for_stride and self.stride[0] > 1):
            cfg = dict(fbm_cfg or {})
            unsupported = {key: v for key, v in cfg.items() if key not in _FBM_KEYS and _FBM_FIXED.get(key) != v}
            if unsupported:
                raise ValueError(f"fbm_cfg entries {sorted(unsupported)} are not supported (only "
                                 f"{sorted(_FBM_KEYS)} vary; the others take the released defaults {_FBM_FIXED})")
            self.FBM = FrequencyBandModulation(in_channels, exact_init=exact, **fk,
                                               **{key: v for key, v in cfg.items() if key in _FBM_KEYS})
        if use_ksm_local:
            self.KSM_Local = KernelSpatialModulation_Local(in_channels, out_channels * k * k, exact_init=exact, **fk)
        order = radial_order(rows, cols).reshape(2, kernel_num, -1)
        self.register_buffer("indices", order.unsqueeze(0).repeat(param_ratio, 1, 1, 1).to(device), persistent=False)
        # band_of[r, c]: the band of spectrum entry (r, c) (the inverse of `indices`), to scale it in one gather.
        band_of = torch.empty(rows, cols // 2 + 1, dtype=torch.long, device="cpu")  # `order` is on the CPU
        band_of[order[0], order[1]] = torch.arange(kernel_num, device="cpu").unsqueeze(1).expand_as(order[0])
        self.register_buffer("band_of", band_of.to(device), persistent=False)
        if convert_param:
            self.dft_weight = nn.Parameter(dft_weight_from_weight(self.weight.detach(), param_ratio))
            del self.weight

    def extra_repr(self) -> str:
        extra = f", kernel_num={self.kernel_num}, param_ratio={self.param_ratio}" if self.is_dynamic else \
            ", static (below the FDConv gate)"
        return super().extra_repr() + extra

    def spectrum_weight(self) -> Tensor:
        """(param_ratio, C_out*k, C_in*k//2+1, 2): the parameter, or the transform of `weight` without one."""
        if "dft_weight" in self._parameters:
            return self.dft_weight
        return dft_weight_from_weight(self.weight, self.param_ratio)

    def dynamic_kernel(self, band_gates: Optional[Tensor], batch: int) -> Tensor:
        """(B, C_out, C_in, k, k): the per-sample kernel from the band-gated spectrum (before the other gates)."""
        k = self.kernel_size[0]
        rows, cols = self.out_channels * k, self.in_channels * k
        spectrum = 0
        for i, part in enumerate(self.spectrum_weight()):
            scaled = part * self.alpha
            if band_gates is None:  # a single band: the released layer skips the band gate (gate 1)
                spectrum = spectrum + scaled.expand(batch, *scaled.shape)
            else:
                per_entry = band_gates.view(batch, self.param_ratio, self.kernel_num)[:, i][:, self.band_of]
                spectrum = spectrum + scaled * per_entry.unsqueeze(-1)
        kernel = torch.fft.irfft2(torch.complex(spectrum[..., 0], spectrum[..., 1]), s=(rows, cols))
        return kernel.view(batch, self.out_channels, k, self.in_channels, k).transpose(2, 3)

    def forward(self, x: Tensor) -> Tensor:
        if not self.is_dynamic:
            return super().forward(x)
        b, cin, h, w = x.shape
        k = self.kernel_size[0]
        if b == 1 and self.KSM_Global.bn.training:
            raise ValueError("FDConv2d: a training-mode batch of one sample cannot go through the global modulation's "
                             "BatchNorm (KSM_Global.bn, as released); call model.eval() or train with batches of "
                             "more than one sample")
        pooled = F.adaptive_avg_pool2d(x, 1)
        channel, filt, spatial, band_gates = self.KSM_Global(pooled)
        # Taps that only ever see the padding (maps smaller than the kernel: ResNet18's last stage at 32px has 1x1
        # maps) are cut from the kernel right after the inverse FFT, so none of the kernel-sized gate products
        # below, and none of what autograd keeps of them, is built for them; the conv then runs on the cut kernel
        # with the padding reduced by as much: the same output.
        crop = data_tap_box((h, w), self.kernel_size, self.stride, self.padding, self.dilation)
        box, padding = crop if crop is not None else ((slice(None), slice(None)), self.padding)
        weight = self.dynamic_kernel(band_gates, b)[..., box[0], box[1]]
        kh, kw = weight.shape[-2:]
        if spatial is not None:
            weight = spatial.view(b, 1, 1, k, k)[..., box[0], box[1]] * weight
        if self.use_ksm_local:
            local = self.KSM_Local(pooled).view(b, cin, self.out_channels, k, k)[..., box[0], box[1]].transpose(1, 2)
            weight = weight * gate(local, self.ksm_local_act, self.att_multi)
        if hasattr(self, "FBM"):
            x = self.FBM(x)
        # As released: the channel and filter gates go into the kernel when the kernel is smaller than the
        # input plus output feature maps, and onto the features otherwise (the same product, cheaper).
        on_kernel = self.out_channels * cin * k * k < (cin + self.out_channels) * h * w
        if on_kernel:
            if channel is not None:
                weight = weight * channel.view(b, 1, cin, 1, 1)
            if filt is not None:
                weight = weight * filt.view(b, -1, 1, 1, 1)
        elif channel is not None:
            x = x * channel.view(b, cin, 1, 1).to(x.dtype)
        out = F.conv2d(x.reshape(1, b * cin, *x.shape[-2:]), weight.reshape(b * self.out_channels, cin, kh, kw),
                       None, self.stride, padding, self.dilation, b)
        out = out.view(b, self.out_channels, *out.shape[-2:])
        if filt is not None and not on_kernel:
            out = out * filt.view(b, -1, 1, 1)
        if self.bias is not None:
            out = out + self.bias.view(1, -1, 1, 1)
        return out
