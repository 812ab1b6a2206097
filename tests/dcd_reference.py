"""A plain per-sample reference for the DCD layers (odconv/dcd.py), written from the decomposition itself.

For each sample it builds the layer's equivalent kernel explicitly, W_b = Lambda_b W0 with
P (I + diag(a2) Phi_b) diag(a1) Q added on the centre tap, and its bias P((I + diag(a2) Phi_b) c1 + c2), where
a*, c* are the two BatchNorms folded into affine maps (running statistics in eval mode, the batch's in train mode,
which is the only thing computed over the batch); then one `F.conv2d` (or matrix product) per sample. Everything
comes from the layer's parameters by explicit tensor algebra: no module of the layer runs, and the feature-space
order of the layer (conv, 1x1 maps, bmm) never appears.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def hsigmoid(t: Tensor) -> Tensor:
    return torch.clamp(t + 3.0, 0.0, 6.0) / 3.0


def adaptive_avg_pool(x: Tensor, size: int) -> Tensor:
    """(B, C, size, size), torch's adaptive bins [floor(i H / s), ceil((i + 1) H / s)) written out."""
    h, w = x.shape[-2:]
    rows = []
    for i in range(size):
        h0, h1 = (i * h) // size, -(-((i + 1) * h) // size)
        cols = []
        for j in range(size):
            w0, w1 = (j * w) // size, -(-((j + 1) * w) // size)
            cols.append(x[:, :, h0:h1, w0:w1].mean(dim=(2, 3)))
        rows.append(torch.stack(cols, dim=-1))
    return torch.stack(rows, dim=-2)


def bn_affine(z: Tensor, p: dict[str, Tensor], prefix: str, training: bool, eps: float = 1e-5) -> tuple[Tensor, Tensor]:
    """(a, c) with BN(z) = a * z + c per channel (dim 1): the batch's statistics over every dim but 1 (biased
    variance) in train mode, the running ones in eval mode."""
    if training:
        dims = [d for d in range(z.dim()) if d != 1]
        mu, var = z.mean(dims), z.var(dims, unbiased=False)
    else:
        mu, var = p[prefix + "running_mean"], p[prefix + "running_var"]
    a = p[prefix + "weight"] / torch.sqrt(var + eps)
    return a, p[prefix + "bias"] - a * mu


def attention(pooled: Tensor, p: dict[str, Tensor], dim: int) -> tuple[Tensor, Tensor]:
    """(Phi (B, L, L), Lambda (B, O)): Linear, x * hsigmoid(Linear x), then the two heads."""
    h = pooled @ p["fc.0.weight"].T
    h = h * hsigmoid(h @ p["fc.1.fc.0.weight"].T)
    return (h @ p["fc_phi.weight"].T).view(-1, dim, dim), hsigmoid(h @ p["fc_scale.weight"].T)


def reference_dcd_conv(x: Tensor, layer: nn.Module, p: dict[str, Tensor], training: bool) -> Tensor:
    """DCDConv2d (names q, p) or DCDModule (names conv_q, conv_p), per sample through its equivalent kernel."""
    q_name, p_name = ("q", "p") if "q.weight" in p else ("conv_q", "conv_p")
    dim, s = layer.dim, layer.stride
    phi, scale = attention(adaptive_avg_pool(x, layer.pool_size).flatten(1), p, dim)
    q, pm, w0 = p[q_name + ".weight"][:, :, 0, 0], p[p_name + ".weight"][:, :, 0, 0], p["conv.weight"]
    # The batch statistics of the two BatchNorms: the latent Q x at the strided positions, then Phi_b BN1(Q x).
    u = torch.einsum("lc,bchw->blhw", q, x[:, :, :: s[0], :: s[1]])
    a1, c1 = bn_affine(u, p, "bn1.", training)
    v = torch.einsum("bij,bjhw->bihw", phi, a1[:, None, None] * u + c1[:, None, None])
    a2, c2 = bn_affine(v, p, "bn2.", training)
    kh, kw = layer.kernel_size
    eye = torch.eye(dim, dtype=x.dtype)
    outs = []
    for b in range(x.shape[0]):
        fusion = eye + a2[:, None] * phi[b]  # I + diag(a2) Phi_b
        kernel = scale[b][:, None, None, None] * w0
        centre = torch.zeros_like(w0)
        centre[:, :, kh // 2, kw // 2] = pm @ fusion @ (a1[:, None] * q)
        bias = pm @ (fusion @ c1 + c2)
        outs.append(F.conv2d(x[b: b + 1], kernel + centre, bias, layer.stride, layer.padding, layer.dilation))
    return torch.cat(outs)


def reference_dcd_linear(x: Tensor, layer: nn.Module, p: dict[str, Tensor], training: bool) -> Tensor:
    """DCDLinear, per sample through its equivalent matrix and bias."""
    dim = layer.dim
    phi, scale = attention(x, p, dim)
    u = x @ p["cls_q.weight"].T
    a1, c1 = bn_affine(u, p, "bn1.", training)
    v = torch.einsum("bij,bj->bi", phi, a1 * u + c1)
    a2, c2 = bn_affine(v, p, "bn2.", training)
    eye = torch.eye(dim, dtype=x.dtype)
    outs = []
    for b in range(x.shape[0]):
        fusion = eye + a2[:, None] * phi[b]
        matrix = scale[b][:, None] * p["cls.weight"] + p["cls_p.weight"] @ fusion @ (a1[:, None] * p["cls_q.weight"])
        bias = scale[b] * p["cls.bias"] + p["cls_p.weight"] @ (fusion @ c1 + c2)
        outs.append(matrix @ x[b] + bias)
    return torch.stack(outs)


def dcd_longest_sum(layer: nn.Module, x: Tensor) -> int:
    """The longest float32 reduction of a DCD layer's forward and backward at `x`: a weight gradient or a batch
    statistic (B Ho Wo), the pooling (H W), a conv output (C_in k^2) or input gradient (C_out k^2), the trunk's
    input (C_in pool^2); for DCDLinear the batch, the input and the output widths."""
    if x.dim() == 2:
        return max(x.shape[0], layer.in_features, layer.out_features)
    b, c, h, w = x.shape
    (kh, kw), (sh, sw) = layer.kernel_size, layer.stride
    ho, wo = (h - 1) // sh + 1, (w - 1) // sw + 1
    return max(b * ho * wo, h * w, c * kh * kw, layer.out_channels * kh * kw, c * layer.pool_size**2)
