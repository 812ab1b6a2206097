"""The attention branch of ODConv: four attentions over one kernel's four dimensions (Li et al., ICLR 2022)."""
from __future__ import annotations

from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class Attentions(NamedTuple):
    """Per-sample attentions; a head that the layer does not have is None (its attention is 1)."""

    channel: Tensor  # (B, C_in), sigmoid
    filter: Optional[Tensor]  # (B, C_out), sigmoid; None for depthwise convs
    spatial: Optional[Tensor]  # (B, kh, kw), sigmoid; None for 1x1 kernels
    kernel: Optional[Tensor]  # (B, K) mixing weights of the K kernels (ODConv, DyConv: softmax; CondConv: sigmoid)


class _GlobalAvgPool(torch.autograd.Function):
    """Spatial mean (B, C, H, W) -> (B, C) whose backward returns the broadcast gradient as a stride-0 view.

    Autograd's own backward of `mean` writes a (B, C, H, W) tensor of grad / (H*W) before adding it to the input's
    gradient from the convolution: one extra pass over every ODConv layer's input per step (17 ms of a 1.0 s
    od_mobilenetv2_100 step for its first 112x112 layer alone). The view is added in that same addition.
    """

    @staticmethod
    def forward(ctx, x):
        ctx.shape = x.shape
        return x.mean((2, 3))

    @staticmethod
    def backward(ctx, grad):
        b, c, h, w = ctx.shape
        return (grad / (h * w))[:, :, None, None].expand(b, c, h, w)


def global_avg_pool(x: Tensor) -> Tensor:
    """(B, C, H, W) -> (B, C) spatial mean, with a backward pass that writes no (B, C, H, W) tensor."""
    return _GlobalAvgPool.apply(x)


class ODAttention(nn.Module):
    """Squeeze (GAP -> 1x1 conv -> BN -> ReLU), then one 1x1-conv head per attended dimension.

    Module and parameter names follow the released code (`fc`, `bn`, `channel_fc`, `filter_fc`,
    `spatial_fc`, `kernel_fc`) so released checkpoints load unchanged.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: tuple[int, int],
        groups: int = 1,
        reduction: float = 0.0625,
        kernel_num: int = 4,
        min_channel: int = 16,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        factory_kwargs = {"device": device, "dtype": dtype}
        hidden = max(int(in_channels * reduction), min_channel)
        self.kernel_size = kernel_size
        self.kernel_num = kernel_num
        # A buffer, not a Python float: changing it every iteration must not retrigger torch.compile.
        # Not persistent, so state dicts keep the released keys.
        self.register_buffer("temperature", torch.tensor(1.0, **factory_kwargs), persistent=False)

        self.fc = nn.Conv2d(in_channels, hidden, 1, bias=False, **factory_kwargs)
        self.bn = nn.BatchNorm2d(hidden, **factory_kwargs)
        self.channel_fc = nn.Conv2d(hidden, in_channels, 1, **factory_kwargs)
        is_depthwise = in_channels == groups and in_channels == out_channels
        self.filter_fc = None if is_depthwise else nn.Conv2d(hidden, out_channels, 1, **factory_kwargs)
        kh, kw = kernel_size
        self.spatial_fc = None if kh * kw == 1 else nn.Conv2d(hidden, kh * kw, 1, **factory_kwargs)
        self.kernel_fc = None if kernel_num == 1 else nn.Conv2d(hidden, kernel_num, 1, **factory_kwargs)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # As released: He init (fan_out, relu) for every 1x1 conv, zero biases, identity BN, so every
        # sigmoid starts at 0.5 and the softmax at 1/K.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def update_temperature(self, temperature: float) -> None:
        self.temperature.fill_(float(temperature))

    def _heads(self) -> list[nn.Conv2d]:
        return [h for h in (self.channel_fc, self.filter_fc, self.spatial_fc, self.kernel_fc) if h is not None]

    def forward(self, x: Tensor) -> Attentions:
        b = x.shape[0]
        s = F.linear(global_avg_pool(x), self.fc.weight.flatten(1))  # GAP, then the squeeze fc
        s = F.relu(self.bn(s.view(b, -1, 1, 1))).view(b, -1)
        # The four heads as one GEMM over their concatenated weights, one division by the temperature and one
        # sigmoid over channel, filter and spatial logits together: a layer's attention branch is a dozen
        # small ops instead of twenty, and in eager mode each op costs more than its arithmetic (batch 1,
        # small maps). Parameters and results are those of the released per-head 1x1 convs.
        heads = self._heads()
        weight = torch.cat([h.weight.flatten(1) for h in heads])
        bias = torch.cat([h.bias for h in heads])
        logits = F.linear(s, weight, bias) / self.temperature
        c, o = self.channel_fc.out_channels, self.filter_fc.out_channels if self.filter_fc is not None else 0
        kh, kw = self.kernel_size
        t = kh * kw if self.spatial_fc is not None else 0
        gates = torch.sigmoid(logits[:, : c + o + t])
        channel = gates[:, :c]
        filt = gates[:, c: c + o] if self.filter_fc is not None else None
        spatial = gates[:, c + o: c + o + t].view(b, kh, kw) if self.spatial_fc is not None else None
        kernel = torch.softmax(logits[:, c + o + t:], dim=1) if self.kernel_fc is not None else None
        return Attentions(channel, filt, spatial, kernel)

    def extra_repr(self) -> str:
        return f"hidden={self.fc.out_channels}"
