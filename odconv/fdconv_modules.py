"""The modulation modules of FDConv (Chen et al., "Frequency Dynamic Convolution for Dense Image Prediction",
CVPR 2025), written from the released code (github.com/Linwei-Chen/FDConv, FDConv_detection/mmdet_custom/FDConv.py)
with its module and parameter names, so released state dicts load: the global kernel spatial modulation
(`KernelSpatialModulation_Global`), the local one (`KernelSpatialModulation_Local`) and the frequency band
modulation of the input (`FrequencyBandModulation`), and the radial ordering of a real 2-D spectrum that both the
Fourier disjoint weight and the band masks use.
"""
from __future__ import annotations

import functools
import math
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# Gate activations as released: "sigmoid" gives sigmoid(z) * att_multi, "tanh" gives 1 + tanh(z); both are 1 at z=0.
GATE_ACTS = ("sigmoid", "tanh")


def rfft2_frequencies(rows: int, cols: int, device=None) -> Tensor:
    """(rows, cols//2+1, 2) float32 grid of the (row, column) frequencies of `torch.fft.rfft2` of a rows x cols
    signal, in cycles per sample (fftfreq along rows, rfftfreq along columns)."""
    grid = torch.meshgrid(torch.fft.fftfreq(rows, device=device), torch.fft.rfftfreq(cols, device=device),
                          indexing="ij")
    return torch.stack(grid, dim=-1)


def radial_order(rows: int, cols: int) -> Tensor:
    """(2, rows*(cols//2+1)) row and column indices of the rfft2 spectrum of a rows x cols signal, sorted by the
    float32 radius |f| as released. Ties (|f| is symmetric in the row frequency) are broken by position: a stable
    sort, the same on every device. The released `torch.sort` is unstable, so which band a tie on a band boundary
    joins is there up to the sort implementation (on this CPU it differs from the stable order for some shapes;
    the released CUDA order was not checked)."""
    return _radial_order(rows, cols).clone()


@functools.lru_cache(maxsize=64)  # a network repeats a few shapes; sorting a large spectrum is not free
def _radial_order(rows: int, cols: int) -> Tensor:
    # On the CPU whatever the default device (a model built under torch.device("meta") must not cache meta indices).
    radius = rfft2_frequencies(rows, cols, device="cpu").norm(dim=-1).flatten()
    order = torch.sort(radius, stable=True).indices
    half = cols // 2 + 1
    return torch.stack([order // half, order % half])


def gate(logit: Tensor, act: str, att_multi: float) -> Tensor:
    if act == "sigmoid":
        return torch.sigmoid(logit) * att_multi
    return 1 + torch.tanh(logit)


class StarReLU(nn.Module):
    """s * relu(x)^2 + b with a learnable scalar scale s (1 at init) and bias b (0 at init)."""

    def __init__(self, device=None, dtype=None) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(1, device=device, dtype=dtype))
        self.bias = nn.Parameter(torch.zeros(1, device=device, dtype=dtype))

    def forward(self, x: Tensor) -> Tensor:
        return self.scale * F.relu(x) ** 2 + self.bias


class KernelSpatialModulation_Global(nn.Module):  # the released name, kept for its state dicts
    """ODConv-like heads on the pooled input: fc (1x1 conv, no bias) -> BatchNorm2d -> StarReLU, then a channel
    gate (C_in), a filter gate (C_out), a spatial gate (k*k, not for 1x1 kernels) and the frequency-band ("kernel")
    gate (kernel_num, only when there is more than one band).

    Initialisation as released: every conv Kaiming-normal (fan_out), biases 0, then the channel, spatial and kernel
    heads' weights N(0, 1e-6), so those gates start at (almost) 1. The release means to do the same for the filter
    head, but its test is on a bound method (`func_filter`), never an `nn.Conv2d`, so `filter_fc` keeps its Kaiming
    weights: the filter gate starts as a random per-output-channel factor in (0, 2). `exact_init` zeroes every
    head's weights instead, so each gate is exactly 1 at initialisation for any input.
    """

    def __init__(
        self, in_planes: int, out_planes: int, kernel_size: int, reduction: float = 0.0625, kernel_num: int = 4,
        min_channel: int = 16, temp: float = 1.0, kernel_temp: float = 1.0, att_multi: float = 2.0,
        ksm_only_kernel_att: bool = False, act_type: str = "sigmoid", exact_init: bool = False,
        device=None, dtype=None,
    ) -> None:
        super().__init__()
        if act_type not in GATE_ACTS:
            raise ValueError(f"ksm_global_act must be one of {GATE_ACTS}, got {act_type!r}")
        hidden = max(int(in_planes * reduction), min_channel)
        fk = dict(device=device, dtype=dtype)
        self.act_type, self.kernel_size, self.kernel_num = act_type, kernel_size, kernel_num
        self.temperature, self.kernel_temp, self.att_multi = temp, kernel_temp, att_multi
        self.fc = nn.Conv2d(in_planes, hidden, 1, bias=False, **fk)
        self.bn = nn.BatchNorm2d(hidden, **fk)
        self.relu = StarReLU(**fk)
        heads = {}
        if not ksm_only_kernel_att:
            heads["channel_fc"] = in_planes
            heads["filter_fc"] = out_planes
            if kernel_size > 1:
                heads["spatial_fc"] = kernel_size * kernel_size
        if kernel_num > 1:
            heads["kernel_fc"] = kernel_num
        for name, width in heads.items():
            setattr(self, name, nn.Conv2d(hidden, width, 1, bias=True, **fk))
        self.reset_parameters(exact_init)

    def reset_parameters(self, exact_init: bool = False) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        self.bn.reset_parameters()
        small = ("channel_fc", "spatial_fc", "kernel_fc") + (("filter_fc",) if exact_init else ())
        for name in small:
            head = getattr(self, name, None)
            if head is not None:
                nn.init.zeros_(head.weight) if exact_init else nn.init.normal_(head.weight, std=1e-6)

    def update_temperature(self, temperature: float) -> None:
        self.temperature = temperature

    def _head(self, name: str, hidden: Tensor) -> Optional[Tensor]:
        head = getattr(self, name, None)
        return None if head is None else head(hidden).flatten(1)

    def forward(self, pooled: Tensor) -> tuple[Optional[Tensor], ...]:
        """(channel (B, C_in), filter (B, C_out), spatial (B, k*k), kernel (B, kernel_num)) gates; None where the
        layer has no such head."""
        hidden = self.relu(self.bn(self.fc(pooled)))
        logits = [self._head(n, hidden) for n in ("channel_fc", "filter_fc", "spatial_fc")]
        gates = [None if z is None else gate(z / self.temperature, self.act_type, self.att_multi) for z in logits]
        kernel = self._head("kernel_fc", hidden)
        if kernel is not None:
            # The band gates are divided by the number of bands: their sum over bands starts at 1 (then the
            # layer's alpha restores the static kernel's scale).
            kernel = gate(kernel / self.kernel_temp, self.act_type, 2.0) / kernel.shape[1]
        return (*gates, kernel)


def eca_kernel_size(channels: int) -> int:
    """The released 1-D kernel size: an odd number near log2(C)/2 (Python's round, halves to even)."""
    return round(math.log2(channels) / 2 + 0.5) // 2 * 2 + 1


class KernelSpatialModulation_Local(nn.Module):  # the released name
    """A dense (C_out, C_in, k, k) logit from the pooled input: LayerNorm over C_in, then a 1-D conv along the
    channels (ECA-style, 1 -> C_out*k*k outputs, no bias, weights 1e-6 as released, 0 with `exact_init`)."""

    def __init__(self, channel: int, out_n: int, exact_init: bool = False, device=None, dtype=None) -> None:
        super().__init__()
        k_size = eca_kernel_size(channel)
        self.channel, self.out_n = channel, out_n
        self.conv = nn.Conv1d(1, out_n, k_size, padding=(k_size - 1) // 2, bias=False, device=device, dtype=dtype)
        self.norm = nn.LayerNorm(channel, device=device, dtype=dtype)
        nn.init.constant_(self.conv.weight, 0.0 if exact_init else 1e-6)

    def forward(self, pooled: Tensor) -> Tensor:
        """(B, C_in, out_n) logits from the (B, C_in, 1, 1) pooled input."""
        return self.conv(self.norm(pooled.flatten(1).unsqueeze(1))).transpose(1, 2)


class FrequencyBandModulation(nn.Module):
    """Splits the input into octave bands with square low-pass masks max(|f_h|, |f_w|) < 0.5/k for k in `k_list`
    (on the orthonormal rfft2), scales each band above the lowest by a spatial map sigmoid(conv3x3(x)) * 2
    (convs N(0, 1e-6) as released, 0 with `exact_init`) and sums the bands; the lowest band passes unscaled unless
    `lowfreq_att`. The masks are computed once on a 64 x 64 grid and resized to the input's spectrum by nearest
    interpolation, as released (for sizes other than divisors of 64 that is an approximation of the cut-offs)."""

    MASK_GRID = (64, 64)

    def __init__(
        self, in_channels: int, k_list: Sequence[int] = (2, 4, 8), lowfreq_att: bool = False,
        spatial_kernel: int = 3, exact_init: bool = False, device=None, dtype=None,
    ) -> None:
        super().__init__()
        self.k_list, self.lowfreq_att = tuple(k_list), lowfreq_att
        self.freq_weight_conv_list = nn.ModuleList(
            nn.Conv2d(in_channels, 1, spatial_kernel, padding=spatial_kernel // 2, device=device, dtype=dtype)
            for _ in range(len(self.k_list) + int(lowfreq_att))
        )
        for conv in self.freq_weight_conv_list:
            nn.init.zeros_(conv.weight) if exact_init else nn.init.normal_(conv.weight, std=1e-6)
            nn.init.zeros_(conv.bias)
        self.register_buffer("cached_masks", self.band_masks(*self.MASK_GRID, self.k_list), persistent=False)

    @staticmethod
    def band_masks(rows: int, cols: int, k_list: Sequence[int]) -> Tensor:
        """(len(k_list), 1, rows, cols//2+1) boolean low-pass masks on the rfft2 grid."""
        extent = rfft2_frequencies(rows, cols).abs().amax(dim=-1)
        return torch.stack([extent < 0.5 / k + 1e-8 for k in k_list]).unsqueeze(1)

    def forward(self, x: Tensor) -> Tensor:
        # Half-precision FFTs are limited to powers of two (and lose the band split's accuracy): as released, the
        # bands are computed in float32 then; float64 stays float64.
        att_feat = x
        if x.dtype in (torch.float16, torch.bfloat16):
            x = x.float()
        h, w = x.shape[-2:]
        spectrum = torch.fft.rfft2(x, norm="ortho")
        masks = F.interpolate(self.cached_masks.to(x.dtype), size=(h, w // 2 + 1), mode="nearest")
        out, above = 0, x
        for i in range(len(self.k_list)):
            low = torch.fft.irfft2(spectrum * masks[i], s=(h, w), norm="ortho")
            scale = torch.sigmoid(self.freq_weight_conv_list[i](att_feat)) * 2
            out = out + scale * (above - low)
            above = low
        if self.lowfreq_att:
            above = above * torch.sigmoid(self.freq_weight_conv_list[-1](att_feat)) * 2
        return out + above
