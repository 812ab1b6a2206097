"""DCD: dynamic convolution decomposition, the low-rank member of the family, as released.

Li, Chen, Dai, Liu, Chen, Yu, Yuan, Liu, Chen, Vasconcelos. "Revisiting Dynamic Convolution via Matrix
Decomposition." ICLR 2021. https://openreview.net/forum?id=YwpZmcAehZ (code: github.com/liyunsheng13/dcd).

Instead of attending over K kernels, DCD adds to a static conv W0 a dynamic low-rank residual:

    y = Lambda(x) * (W0 * x) + P (BN2(Phi(x) BN1(Q x)) + BN1(Q x))

Q (C_in -> L) and P (L -> C_out) are static 1x1 convs, Phi(x) an L x L matrix and Lambda(x) a per-output-channel
scale, both from an attention trunk on the pooled input. With the BatchNorms folded into affine maps, each sample's
kernel is ``Lambda W0 + P (I + diag(a2) Phi) diag(a1) Q`` on the kernel's centre tap: the paper's
``W(x) = Lambda(x) W0 + P Phi(x) Q^T`` with a static identity term, the dynamic part a 1x1 residual whatever the
kernel size. The released code computes it in feature space, as here (no per-sample kernel is ever built).

Three released modules, one computation; submodule names are the released ones so released state dicts load:
- `DCDConv2d`: the ResNet layer (`conv_dy`; with ``pool_size=2`` the ResNet18/34 `conv_basic_dy`, whose trunk sees
  the 2x2-pooled input, 4 C_in features, and whose latent width is L = floor(sqrt(4 C_in))).
- `DCDModule`: the MobileNetV2 1x1 layer (`DYModule`), with its own rule for L and the pooling.
- `DCDLinear`: the dynamic classifier (`DYCls`), the same decomposition on a fully connected layer, L = 32.
"""
from __future__ import annotations

import math
from typing import Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.utils import _pair

IntOrPair = Union[int, tuple[int, int]]


class Hsigmoid(nn.Module):
    """The released gate relu6(x + 3) / 3: a hard sigmoid with range [0, 2] (twice torch's hardsigmoid), so a zero
    input gives 1 and a gate can amplify as well as damp."""

    def forward(self, x: Tensor) -> Tensor:
        return F.relu6(x + 3.0) / 3.0


class SEModuleSmall(nn.Module):
    """The released `SEModule_small`: x * Hsigmoid(W x), a square gate on the trunk's squeezed vector."""

    def __init__(self, channels: int, device=None, dtype=None) -> None:
        super().__init__()
        self.fc = nn.Sequential(nn.Linear(channels, channels, bias=False, device=device, dtype=dtype), Hsigmoid())

    def forward(self, x: Tensor) -> Tensor:
        return x * self.fc(x)


class _Decomposition(nn.Module):
    """Attention trunk and heads shared by the three layers: ``fc`` (Linear + SEModuleSmall) on the pooled input,
    then ``fc_phi`` (L x L) and ``fc_scale`` (one gate per output channel, Hsigmoid), and the two BatchNorms of the
    latent space. Subclasses build the static and low-rank maps and call `_fuse`."""

    def _build_trunk(self, in_features: int, squeeze: int, dim: int, out_channels: int, dd: dict) -> None:
        self.dim = dim
        self.fc = nn.Sequential(nn.Linear(in_features, squeeze, bias=False, **dd), SEModuleSmall(squeeze, **dd))
        self.fc_phi = nn.Linear(squeeze, dim * dim, bias=False, **dd)
        self.fc_scale = nn.Linear(squeeze, out_channels, bias=False, **dd)
        self.hs = Hsigmoid()

    def _attention(self, pooled: Tensor) -> tuple[Tensor, Tensor]:
        """(Phi (B, L, L), Lambda (B, C_out)) from the pooled input (B, features)."""
        y = self.fc(pooled)
        return self.fc_phi(y).view(-1, self.dim, self.dim), self.hs(self.fc_scale(y))

    def _fuse(self, latent: Tensor, phi: Tensor) -> Tensor:
        """BN2(Phi z) + z on the normalised latent z (B, L, N): the dynamic channel fusion (BN2 is a BatchNorm1d
        over the L channels, its statistics over the batch and the N positions)."""
        return self.bn2(torch.bmm(phi, latent)) + latent


def _conv_weights_init(module: nn.Module) -> None:
    # The released ResNet init of every Conv2d (normal, std sqrt(2 / (k*k*C_out))): He init, fan_out. The Linear
    # layers keep torch's default init, as the released ResNet leaves them (its MobileNetV2 re-inits them).
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)


class DCDConv2d(_Decomposition):
    """The released ResNet DCD conv: ``Lambda(x) * conv(x) + p(BN2(Phi(x) BN1(q(x))) + BN1(q(x)))``.

    - ``conv``: the static k x k conv W0 (no bias); ``q``: 1x1 conv C_in -> L with the layer's stride; ``p``: 1x1
      conv L -> C_out. The low-rank path reads the input where the kernel's centre tap does, so the padding must
      centre the kernel: odd kernel, padding = dilation * (kernel_size - 1) / 2 (every conv of the released nets).
    - ``pool_size``: 1 (`conv_dy`, ResNet50/101) or 2 (`conv_basic_dy`, ResNet18/34): the trunk sees the
      pool_size x pool_size average-pooled input, C_in * pool_size^2 features, flattened channel-major.
    - L = floor(sqrt(C_in * pool_size^2)); trunk width max(C_in * pool_size^2, L^2) // fc_squeeze (16 in the released
      ResNets), at least 4 (the released pooled layer's floor; the unpooled one has none but never needs it: its
      narrowest input in the released networks, 64 channels, already gives 4).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: IntOrPair,
        stride: IntOrPair = 1,
        padding: IntOrPair = 0,
        dilation: IntOrPair = 1,
        groups: int = 1,
        bias: bool = False,
        pool_size: int = 1,
        fc_squeeze: int = 16,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        if in_channels <= 0 or out_channels <= 0:
            raise ValueError(f"in_channels and out_channels must be positive, got {in_channels} and {out_channels}")
        if groups != 1:
            raise ValueError(f"DCDConv2d has no grouped form (the released layer is a dense conv), got groups={groups}")
        if bias:
            raise ValueError("DCDConv2d has no bias (the released layer's convs have none; a BatchNorm follows it)")
        if pool_size < 1 or fc_squeeze < 1:
            raise ValueError(f"pool_size and fc_squeeze must be positive integers, got {pool_size} and {fc_squeeze}")
        kernel_size, stride, dilation = _pair(kernel_size), _pair(stride), _pair(dilation)
        if isinstance(padding, str):
            raise ValueError("DCDConv2d takes a numeric padding: dilation * (kernel_size - 1) / 2")
        padding = _pair(padding)
        if any(k % 2 == 0 or p != d * (k - 1) // 2 for k, p, d in zip(kernel_size, padding, dilation)):
            raise ValueError(
                f"DCDConv2d needs an odd kernel centred by its padding (padding = dilation * (kernel_size - 1) / 2), "
                f"so that its 1x1 low-rank path reads the kernel's centre tap; got kernel_size={kernel_size}, "
                f"padding={padding}, dilation={dilation}"
            )
        dd = {"device": device, "dtype": dtype}
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride, self.padding, self.dilation = kernel_size, stride, padding, dilation
        self.groups = 1
        self.pool_size, self.fc_squeeze = pool_size, fc_squeeze
        features = in_channels * pool_size**2
        dim = math.isqrt(features)
        squeeze = max(max(features, dim * dim) // fc_squeeze, 4)
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, dilation, bias=False, **dd)
        self.q = nn.Conv2d(in_channels, dim, 1, stride, 0, bias=False, **dd)
        self.p = nn.Conv2d(dim, out_channels, 1, bias=False, **dd)
        self.bn1 = nn.BatchNorm2d(dim, **dd)
        self.bn2 = nn.BatchNorm1d(dim, **dd)
        self.avg_pool = nn.AdaptiveAvgPool2d(pool_size)
        self._build_trunk(features, squeeze, dim, out_channels, dd)
        _conv_weights_init(self)

    def forward(self, x: Tensor) -> Tensor:
        phi, scale = self._attention(self.avg_pool(x).flatten(1))
        static = self.conv(x) * scale[:, :, None, None]
        latent = self.bn1(self.q(x))
        b, _, h, w = latent.shape
        fused = self._fuse(latent.flatten(2), phi).view(b, self.dim, h, w)
        return self.p(fused) + static

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"dim={self.dim}, pool_size={self.pool_size}")


def mobilenetv2_latent_dim(inp: int, oup: int, mul: int) -> int:
    """L of the released MobileNetV2 layer: min(inp * mul, oup) / r, r from 8 (expanding layers, mul 4) or 2
    (projecting, mul 1) doubled until L^2 <= 2 * inp * mul; at least 4."""
    reduction = 8 if mul == 4 else 2
    dim = min(inp * mul // reduction, oup // reduction)
    while dim**2 > inp * mul * 2:
        reduction *= 2
        dim = min(inp * mul // reduction, oup // reduction)
    return max(dim, 4)


class DCDModule(_Decomposition):
    """The released MobileNetV2 DCD layer (`DYModule`), a 1x1 stride-1 conv ``inp -> oup``: as `DCDConv2d` with
    the maps named ``conv``, ``conv_q``, ``conv_p``. An expanding layer (inp < oup) pools its input 2x2 (4 inp
    trunk features), a projecting one globally; L from `mobilenetv2_latent_dim`; trunk width
    max(inp * mul, L^2) // fc_squeeze, at least 4 (the released constructor default fc_squeeze is 8, its
    training and evaluation commands and checkpoint use 16)."""

    def __init__(self, inp: int, oup: int, fc_squeeze: int = 8, device=None, dtype=None) -> None:
        super().__init__()
        if inp <= 0 or oup <= 0 or fc_squeeze < 1:
            raise ValueError(f"inp, oup and fc_squeeze must be positive, got {inp}, {oup} and {fc_squeeze}")
        dd = {"device": device, "dtype": dtype}
        self.in_channels, self.out_channels = inp, oup
        self.kernel_size, self.stride, self.padding, self.dilation, self.groups = (1, 1), (1, 1), (0, 0), (1, 1), 1
        self.mul = 4 if inp < oup else 1
        self.pool_size = 2 if self.mul == 4 else 1
        self.fc_squeeze = fc_squeeze
        dim = mobilenetv2_latent_dim(inp, oup, self.mul)
        squeeze = max(max(inp * self.mul, dim * dim) // fc_squeeze, 4)
        self.conv = nn.Conv2d(inp, oup, 1, bias=False, **dd)
        self.avg_pool = nn.AdaptiveAvgPool2d(self.pool_size)
        self.conv_q = nn.Conv2d(inp, dim, 1, bias=False, **dd)
        self.conv_p = nn.Conv2d(dim, oup, 1, bias=False, **dd)
        self.bn1 = nn.BatchNorm2d(dim, **dd)
        self.bn2 = nn.BatchNorm1d(dim, **dd)
        self._build_trunk(inp * self.mul, squeeze, dim, oup, dd)
        _conv_weights_init(self)

    def forward(self, x: Tensor) -> Tensor:
        phi, scale = self._attention(self.avg_pool(x).flatten(1))
        static = self.conv(x) * scale[:, :, None, None]
        latent = self.bn1(self.conv_q(x))
        b, _, h, w = latent.shape
        fused = self._fuse(latent.flatten(2), phi).view(b, self.dim, h, w)
        return self.conv_p(fused) + static

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, dim={self.dim}, pool_size={self.pool_size}"


class DCDLinear(_Decomposition):
    """The released dynamic classifier (`DYCls`): ``Lambda(x) * cls(x) + cls_p(BN2(Phi(x) BN1(cls_q(x))) +
    BN1(cls_q(x)))`` with L = 32 and a trunk of width 32 on the input vector itself (no pooling). ``cls`` is the
    static classifier (with bias); `in_features`/`out_features` as `nn.Linear`."""

    def __init__(self, in_features: int, out_features: int, dim: int = 32, squeeze: int = 32,
                 device=None, dtype=None) -> None:
        super().__init__()
        if min(in_features, out_features, dim, squeeze) <= 0:
            raise ValueError(f"DCDLinear sizes must be positive, got {in_features}, {out_features}, {dim}, {squeeze}")
        dd = {"device": device, "dtype": dtype}
        self.in_features, self.out_features = in_features, out_features
        self.cls = nn.Linear(in_features, out_features, **dd)
        self.cls_q = nn.Linear(in_features, dim, bias=False, **dd)
        self.cls_p = nn.Linear(dim, out_features, bias=False, **dd)
        self.bn1 = nn.BatchNorm1d(dim, **dd)
        self.bn2 = nn.BatchNorm1d(dim, **dd)
        self._build_trunk(in_features, squeeze, dim, out_features, dd)

    def forward(self, x: Tensor) -> Tensor:
        phi, scale = self._attention(x)
        static = self.cls(x) * scale
        latent = self.bn1(self.cls_q(x)).unsqueeze(2)  # (B, L, 1): one position
        return self.cls_p(self._fuse(latent, phi).squeeze(2)) + static

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, dim={self.dim}"


# The DCD layers: each initialises itself (the zoo's static-layer init leaves their insides alone).
DCD_LAYERS = (DCDConv2d, DCDModule, DCDLinear)
