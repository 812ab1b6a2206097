"""A plain per-sample reference for KernelWarehouse layers, written from the released maths (not from
odconv/kernelwarehouse.py): explicit loops place each mixture's cell in the kernel, and one F.conv1d/2d/3d (or
F.linear) runs per sample, all from the float64 parameters."""
from __future__ import annotations

import itertools
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from odconv import KWConvNd, KWLinear

CONVS = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


class Probe(nn.Module):
    """One KW layer and its warehouse manager, so that named_parameters() holds exactly what the layer computes
    with: `warehouse_manager.weights.{k}` and `layer.*`."""

    def __init__(self, layer: nn.Module, manager: nn.Module) -> None:
        super().__init__()
        self.layer = layer
        self.warehouse_manager = manager

    def forward(self, x: Tensor) -> Tensor:
        return self.layer(x)


def conv_of(layer: nn.Module) -> KWConvNd:
    return layer.conv if isinstance(layer, KWLinear) else layer


def reference_alpha(pooled: Tensor, conv: KWConvNd, p: dict[str, Tensor], prefix: str, training: bool,
                    tau: float) -> Tensor:
    """(B, m, n) cell weights: fc1, norm, ReLU, fc2 (or the non-local basis), L1 normalisation, tau blend."""
    att = conv.attention
    a = prefix + "attention."
    h = pooled @ p[a + "fc1.weight"].T
    if a + "fc1.bias" in p:
        h = h + p[a + "fc1.bias"]
    if isinstance(att.norm1, nn.BatchNorm1d):
        if training:
            mu, var = h.mean(0), h.var(0, unbiased=False)
        else:
            mu, var = p[a + "norm1.running_mean"], p[a + "norm1.running_var"]
        h = (h - mu) / torch.sqrt(var + att.norm1.eps) * p[a + "norm1.weight"] + p[a + "norm1.bias"]
    else:
        mu, var = h.mean(1, keepdim=True), h.var(1, unbiased=False, keepdim=True)
        h = (h - mu) / torch.sqrt(var + att.norm1.eps) * p[a + "norm1.weight"] + p[a + "norm1.bias"]
    h = torch.relu(h)
    b, m, n = h.shape[0], att.num_mixtures, att.num_cells
    z = h @ p[a + "fc2.weight"].T
    if a + "fc3.weight" in p:  # per mixture: own cells, basis, zero cell; basis -> the other cells
        local = att.num_local_cells
        z = z.reshape(b, m, -1)
        rows = []
        for j in range(m):
            own, basis, zero = z[:, j, :local], z[:, j, local:-1], z[:, j, -1:]
            others = basis @ p[a + "fc3.weight"].T
            s = att.start_cell
            rows.append(torch.cat([others[:, :s], own, others[:, s:], zero], 1))
        z = torch.stack(rows, 1) + p[a + "basis_bias"].view(1, m, n + 1)
    else:
        z = (z + p[a + "fc2.bias"]).reshape(b, m, n + 1)
    z = z / (z.abs().sum(-1, keepdim=True) + 1e-3)
    beta = att.assignment.double().view(m, n + 1)
    return ((1 - tau) * z + tau * beta)[..., :n]


def place_cells(conv: KWConvNd, cell_mix: Tensor) -> Tensor:
    """Kernel (O, I/g, k...) whose mixture j = (tap, out-group, in-group), tap slowest, is cell_mix[j]."""
    c_out, c_in = cell_mix.shape[1:3]
    o, i = conv.out_channels // c_out, conv.in_channels // conv.groups // c_in
    taps = list(itertools.product(*(range(k) for k in conv.kernel_size)))
    kernel = cell_mix.new_zeros(conv.out_channels, conv.in_channels // conv.groups, *conv.kernel_size)
    j = 0
    for tap in taps:
        for og in range(o):
            for ig in range(i):
                kernel[(slice(og * c_out, (og + 1) * c_out), slice(ig * c_in, (ig + 1) * c_in), *tap)] = \
                    cell_mix[j].reshape(c_out, c_in)
                j += 1
    return kernel


def reference_kw(x: Tensor, layer: nn.Module, p: dict[str, Tensor], training: bool, tau: float,
                 prefix: str = "layer.") -> Tensor:
    """The layer (KWConv1d/2d/3d or KWLinear) at `x` from the parameters `p` of its Probe."""
    conv = conv_of(layer)
    if isinstance(layer, KWLinear):
        prefix += "conv."
        pooled = x.reshape(x.shape[0], -1, x.shape[-1]).mean(1)
    else:
        pooled = x.flatten(2).mean(-1)
    cells = p[f"warehouse_manager.weights.{conv.warehouse_id}"]
    alpha = reference_alpha(pooled, conv, p, prefix, training, tau)
    outs = []
    for b in range(x.shape[0]):
        mix = torch.einsum("jc,cuv->juv", alpha[b], cells.flatten(2))  # one mixed cell per mixture
        w = place_cells(conv, mix)
        if isinstance(layer, KWLinear):
            y = F.linear(x[b], w.flatten(1), p.get(prefix + "bias"))
        else:
            y = CONVS[conv.dimension](x[b: b + 1], w, None, conv.stride, conv.padding, conv.dilation, conv.groups)
            if conv.bias is not None:
                y = y + p[prefix + "bias"].view(1, -1, *([1] * conv.dimension))
        outs.append(y[None] if isinstance(layer, KWLinear) else y)
    return torch.cat(outs)


def longest_kw_sum(layer: nn.Module, x: Tensor, y: Tensor) -> int:
    """The longest float32 reduction: a conv output (C/g * k terms), a kernel gradient (B * output positions), a
    cell mix (n cells), a warehouse cell's gradient (B * m mixtures) or a cell weight's gradient (cell size)."""
    conv = conv_of(layer)
    per_out = conv.in_channels // conv.groups * math.prod(conv.kernel_size)
    positions = y[0].numel() // conv.out_channels
    n, c_out, c_in = conv.attention.num_cells, *conv.cell_shape[:2]
    return max(per_out, x.shape[0] * positions, n, x.shape[0] * conv.num_mixtures, c_out * c_in,
               conv.out_channels * per_out)
