"""``single``: one sample, every attention folded into one kernel, then one static conv.

With one sample the per-sample kernel is the layer's kernel: ``W = a_f * a_c * a_s * sum_i a_k[i] W_i`` is built
with one pass over O*C*kh*kw and the layer runs as ``F.conv2d``. The other formulations scale the maps by a_c and
a_f instead (two passes over them), which is cheaper only where the kernel is the larger; the dispatch uses this one
for batch-1 inference where the kernel is smaller than the maps (MobileNetV2, and ResNet's stages down to 14x14 at
224px). Plain differentiable ops, so it also trains, but nothing is saved for a backward pass beyond what autograd
keeps. Batch 1 only; 2-D and 3-D calls.
"""
from __future__ import annotations

from torch import Tensor

from .common import Formulation, LayerShape, conv_nd


def one_sample(shape: LayerShape) -> bool:
    return shape.batch == 1


def odconv2d_single(x, weight, channel, filt, spatial, kernel, stride, padding, dilation, groups) -> Tensor:
    """The one sample's kernel with every attention folded in, then one static conv."""
    k, o, cg = weight.shape[:3]
    ksize = weight.shape[3:]
    ones = [1] * len(ksize)
    w = weight[0] if kernel is None else (kernel @ weight.reshape(k, -1)).view(o, cg, *ksize)
    scale = None
    if channel is not None:  # a_c of input channel j of output o's group, as an (O or 1, I/g) grid
        if groups == 1:
            scale = channel.view(1, cg, *ones)
        elif groups == o:  # one output channel per group (depthwise): its own I/g input channels
            scale = channel.view(o, cg, *ones)
        else:
            scale = channel.view(groups, 1, cg).expand(groups, o // groups, cg).reshape(o, cg, *ones)
    if filt is not None:
        a_f = filt.view(o, 1, *ones)
        scale = a_f if scale is None else scale * a_f
    if scale is not None:
        w = w * scale
    if spatial is not None:
        w = w * spatial.view(1, 1, *ksize)
    return conv_nd(x, w, None, stride, padding, dilation, groups)


FORMULATION = Formulation("single", odconv2d_single, one_sample)
