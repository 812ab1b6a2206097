"""A plain per-sample reference for ODConv, written from the paper's equations, for the tests to compare against.

Everything is computed from the layer's parameters with explicit tensor algebra (no ODAttention, no odconv
functional code) and one `F.conv2d` per sample, so it shares no code path with the operator under test.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from odconv import ODConv2d


def float64_params(layer: ODConv2d) -> dict[str, Tensor]:
    """Detached float64 leaf copies of the layer's parameters (requires_grad) and buffers."""
    out = {n: p.detach().double().requires_grad_() for n, p in layer.named_parameters()}
    out.update({n: b.detach().double() for n, b in layer.named_buffers() if b.is_floating_point()})
    return out


def reference_odconv(x: Tensor, layer: ODConv2d, p: dict[str, Tensor], training: bool) -> Tensor:
    """y[b] = a_f[b] * conv(x[b] * a_c[b], sum_i a_k[b,i] * a_s[b] * W_i), attention BN in train or eval mode."""
    a = "attention."
    t = float(layer.attention.temperature)
    pooled = x.mean(dim=(2, 3))  # (B, C_in)
    h = pooled @ p[a + "fc.weight"].flatten(1).T
    if training:  # batch statistics, biased variance, as BatchNorm2d in train mode
        mu, var = h.mean(0), h.var(0, unbiased=False)
    else:
        mu, var = p[a + "bn.running_mean"], p[a + "bn.running_var"]
    h = (h - mu) / torch.sqrt(var + layer.attention.bn.eps) * p[a + "bn.weight"] + p[a + "bn.bias"]
    h = torch.relu(h)

    def head(name: str) -> Tensor:
        return (h @ p[a + name + ".weight"].flatten(1).T + p[a + name + ".bias"]) / t

    b = x.shape[0]
    k, o = layer.kernel_num, layer.out_channels
    kh, kw = layer.kernel_size
    ch = torch.sigmoid(head("channel_fc"))
    fi = torch.sigmoid(head("filter_fc")) if layer.attention.filter_fc is not None else torch.ones(b, o, dtype=x.dtype)
    sp = (
        torch.sigmoid(head("spatial_fc")).view(b, kh, kw)
        if layer.attention.spatial_fc is not None else torch.ones(b, kh, kw, dtype=x.dtype)
    )
    ke = torch.softmax(head("kernel_fc"), dim=1) if layer.attention.kernel_fc is not None else torch.ones(b, 1, dtype=x.dtype)
    outs = []
    for i in range(b):
        w = sum(ke[i, j] * sp[i] * p["weight"][j] for j in range(k))
        y = F.conv2d(
            x[i : i + 1] * ch[i].view(1, -1, 1, 1), w, None, layer.stride, layer.padding, layer.dilation, layer.groups
        )
        y = y * fi[i].view(1, -1, 1, 1)
        if layer.bias is not None:
            y = y + p["bias"].view(1, -1, 1, 1)
        outs.append(y)
    return torch.cat(outs)


def rel_err(a: Tensor, b: Tensor) -> float:
    """Relative error in the Frobenius norm, the measure float32 rounding is judged by."""
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))
