"""The ways of computing one ODConv layer. All give the same result; they differ in speed and memory per shape.

For sample b, with channel attention a_c (C_in), filter a_f (C_out), spatial a_s (kh, kw), kernel a_k (K):
``y[b] = conv(x[b], W[b])`` with ``W[b] = a_f[b] * a_c[b] * a_s[b] * sum_i a_k[b, i] W_i`` (outer product over the
kernel's four dimensions). A missing attention (None) is 1.

- ``grouped``: the released code. a_c on the input, a_s and a_k folded into a per-sample kernel, one convolution
  with ``groups = B * groups`` over the batch seen as one image, a_f on the output. Autograd keeps the per-sample
  kernel and the scaled input alive for the backward pass.
- ``folded``: the same grouped convolution, but all four attentions go into the per-sample kernel (no elementwise
  pass over the feature maps) and a custom autograd function recomputes that kernel in the backward pass instead
  of saving it. Best where the kernel is small next to the feature maps: depthwise layers, batch 1.
- ``bmm``: the same folded per-sample kernel, applied as one batched matrix product over the unfolded input
  (im2col; a free view for 1x1 stride-1 kernels). No grouped convolution, whose CPU kernels are slow for
  many groups; the columns are recomputed in the backward pass. ``groups == 1`` only.
- ``feature``: the attentions on the feature maps: a_c on the input, a_f on the output, and for K > 1 one static
  conv with all K kernels stacked along the output channels, summed with a_k (odconv/feature.py). No per-sample
  kernel at all, K times the MACs. Only for layers without spatial attention (1x1 kernels).
- ``columns``: the input unfolded (im2col, NHWC) and scaled by a_c x a_s, one GEMM shared by the batch against
  the K stacked kernels, mixed by a_k x a_f (odconv/autograd.py). ``groups == 1`` only.
- ``taps``: one GEMM shared by the batch giving every tap's output at every pixel, then kh*kw*K shifted
  additions weighted by a_k x a_s x a_f (odconv/taps.py). ``groups == 1`` only.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

FORMULATIONS = ("grouped", "folded", "bmm", "feature", "columns", "taps")


def aggregate_kernels(weight: Tensor, spatial: Optional[Tensor], kernel: Optional[Tensor]) -> Tensor:
    """Per-sample kernel sum_i kernel[b, i] * spatial[b] * W_i: (B, O, I/g, kh, kw), as released."""
    if kernel is None:
        w = weight[0].unsqueeze(0)  # (1, O, I/g, kh, kw)
        return w if spatial is None else w * spatial[:, None, None]
    if spatial is None:
        return torch.einsum("bk,koihw->boihw", kernel, weight)
    return _MixedSpatialKernels.apply(kernel, spatial, weight)


class _MixedSpatialKernels(torch.autograd.Function):
    """sum_i a_k[b, i] * a_s[b] * W_i for K > 1 and a spatial attention, keeping only the attentions and W for the
    backward pass. Under plain autograd the mixed kernel before the a_s scaling is kept for the a_s gradient (a
    second per-sample kernel: twice the released code's memory); one einsum over a_k (x) a_s instead is a
    batched GEMM over the taps whose result needs a copy into the conv's layout (a slow, fresh 38 MB per
    ResNet50 layer3 conv)."""

    @staticmethod
    def forward(ctx, kernel, spatial, weight):
        b, k, t = kernel.shape[0], weight.shape[0], spatial[0].numel()
        w = (kernel @ weight.reshape(k, -1)).view(b, -1, t)
        w.mul_(spatial.reshape(b, 1, t).to(w.dtype))  # in place: w is this function's own buffer
        ctx.save_for_backward(kernel, spatial, weight)
        return w.view(b, *weight.shape[1:])

    @staticmethod
    def backward(ctx, grad):
        kernel, spatial, weight = ctx.saved_tensors
        b, k, t = kernel.shape[0], weight.shape[0], spatial[0].numel()
        dtype = grad.dtype
        g = grad.reshape(b, -1, t)
        a_k, a_s = kernel.to(dtype), spatial.reshape(b, t).to(dtype)
        m = torch.einsum("bnt,knt->bkt", g, weight.reshape(k, -1, t).to(dtype))  # sum_n dL/dW[b] * W_i
        g_kernel = (m * a_s[:, None]).sum(2).to(kernel.dtype) if ctx.needs_input_grad[0] else None
        g_spatial = None
        if ctx.needs_input_grad[1]:
            g_spatial = (m * a_k[:, :, None]).sum(1).view(spatial.shape).to(spatial.dtype)
        g_weight = None
        if ctx.needs_input_grad[2]:
            g_weight = torch.einsum("bj,bnt->jnt", a_k, g * a_s[:, None]).reshape(weight.shape).to(weight.dtype)
        return g_kernel, g_spatial, g_weight


def supported(name: str, groups: int, has_spatial: bool) -> bool:
    """Whether formulation `name` can compute a layer with these groups and spatial attention."""
    if name in ("bmm", "columns", "taps"):
        return groups == 1
    if name == "feature":
        return not has_spatial
    return name in FORMULATIONS


def odconv2d_grouped(x, weight, channel, filt, spatial, kernel, stride, padding, dilation, groups) -> Tensor:
    """The released formulation: one per-sample kernel per sample, run as one grouped conv over the batch."""
    b, c, h, w_ = x.shape
    x = x * channel[:, :, None, None]
    if spatial is None and kernel is None:
        # 1x1, single kernel: the released code runs the static conv here (`_forward_impl_pw1x`).
        out = F.conv2d(x, weight[0], None, stride, padding, dilation, groups)
    else:
        agg = aggregate_kernels(weight, spatial, kernel).reshape(-1, *weight.shape[2:])  # (B*O, I/g, kh, kw)
        out = F.conv2d(x.reshape(1, b * c, h, w_), agg, None, stride, padding, dilation, groups * b)
        out = out.view(b, -1, out.shape[-2], out.shape[-1])
    if filt is not None:
        out = out * filt[:, :, None, None]
    return out


def im2col_nhwc(x: Tensor, kernel_size, stride, padding, dilation) -> Tensor:
    """(B, Ho, Wo, C, kh*kw) patches (the order of a conv weight's (C, kh, kw) flattening), built from strided
    slices of the padded input in NHWC layout.

    `F.unfold` is several times slower than a 3x3 conv on CPU, and gathering from an NCHW tensor is slow too;
    one transposition to NHWC then kh*kw slice copies is a few passes over memory.
    """
    kh, kw = kernel_size
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    xp = x.contiguous(memory_format=torch.channels_last).permute(0, 2, 3, 1)
    if ph or pw:
        xp = F.pad(xp, (0, 0, pw, pw, ph, ph))
    ho = (xp.shape[1] - dh * (kh - 1) - 1) // sh + 1
    wo = (xp.shape[2] - dw * (kw - 1) - 1) // sw + 1
    taps = [xp[:, i * dh: i * dh + sh * (ho - 1) + 1: sh, j * dw: j * dw + sw * (wo - 1) + 1: sw]
            for i in range(kh) for j in range(kw)]
    return torch.stack(taps, dim=-1)
