"""``folded``: all four attentions folded into one per-sample kernel, run as a grouped convolution over the batch
(groups = B * groups), with a custom autograd function that saves only the input and the attentions.

Forward builds ``W[b] = a_f[b] * a_c[b] * a_s[b] * sum_i a_k[b, i] W_i`` (B x O x I/g x kh x kw) and runs it
through an engine (here the grouped conv; ``bmm`` is the same function with a batched-GEMM engine). Autograd would
keep that kernel and every intermediate of its construction for the backward pass (several times B*O*I*kh*kw
floats, 150 MB for one 512-channel 3x3 layer at batch 16); here the backward pass rebuilds it, which costs a few
elementwise passes. No elementwise pass over the feature maps at all: best where the kernel is small next to the
maps (depthwise layers, batch 1). Computes every layer, 3-D ones included.
"""
from __future__ import annotations

from typing import Callable, NamedTuple, Optional

import torch
from torch import Tensor

from .common import Formulation, any_layer, apply_autocast, conv_nd


class Engine(NamedTuple):
    """How a per-sample kernel w (B, O, I/g, kh, kw) is applied to x, and the adjoint of that."""

    forward: Callable  # (x, w, stride, padding, dilation, groups) -> y
    backward: Callable  # (x, w, grad_out, stride, padding, dilation, groups, need_x) -> (grad x or None, grad w)


def _expand_channel(channel: Tensor, out_channels: int, groups: int) -> Tensor:
    """(B, C_in) -> (B, O, C_in/g): the input-channel attention seen by each output channel's kernel slice."""
    b, c = channel.shape
    if groups == 1:
        return channel[:, None, :].expand(b, out_channels, c)
    cg, og = c // groups, out_channels // groups
    return channel.view(b, groups, 1, cg).expand(b, groups, og, cg).reshape(b, out_channels, cg)


def _reduce_channel(grad: Tensor, in_channels: int, groups: int) -> Tensor:
    """Adjoint of `_expand_channel`: (B, O, C_in/g) -> (B, C_in)."""
    b, o, cg = grad.shape
    if groups == 1:
        return grad.sum(1)
    return grad.view(b, groups, o // groups, cg).sum(2).reshape(b, in_channels)


def _mixed(weight: Tensor, kernel: Optional[Tensor], batch: int) -> Tensor:
    """sum_i a_k[b, i] W_i as (B or 1, O, I/g, T): one small GEMM over the kernel axis."""
    k = weight.shape[0]
    flat = weight.reshape(k, -1)
    if kernel is None:
        return flat[0].view(1, weight.shape[1], weight.shape[2], -1)
    return (kernel @ flat).view(batch, weight.shape[1], weight.shape[2], -1)


def _scale(weight: Tensor, channel, filt, spatial, groups: int) -> tuple[Optional[Tensor], Optional[Tensor]]:
    """The per-sample (B, O, I/g) product a_f * a_c (None when both are 1; a broadcast view when one is), and
    the (B, 1, 1, T) spatial factor (None without one)."""
    o, cg = weight.shape[1], weight.shape[2]
    m = None
    if channel is not None:
        m = _expand_channel(channel, o, groups)
        if filt is not None:
            m = m * filt[:, :, None]
    elif filt is not None:
        m = filt[:, :, None].expand(filt.shape[0], o, cg)
    s = None if spatial is None else spatial.reshape(spatial.shape[0], 1, 1, -1)
    return m, s


def _kernel(a: Tensor, m: Optional[Tensor], s: Optional[Tensor], batch: int) -> Tensor:
    """a * m * s as a (B, O, I/g, T) per-sample kernel."""
    w = a if m is None else a * m[..., None]
    if s is not None:
        w = w * s
    return w.expand(batch, *w.shape[1:])


def folded_kernel(weight, channel, filt, spatial, kernel, groups: int, batch: int) -> Tensor:
    """The per-sample kernel with all four attentions folded in: (B, O, I/g, kh, kw)."""
    m, s = _scale(weight, channel, filt, spatial, groups)
    return _kernel(_mixed(weight, kernel, batch), m, s, batch).reshape(batch, *weight.shape[1:])


def _grouped_forward(x, w, stride, padding, dilation, groups):
    b, c = x.shape[:2]
    o = w.shape[1]
    out = conv_nd(x.reshape(1, b * c, *x.shape[2:]), w.reshape(b * o, *w.shape[2:]), None, stride, padding,
                  dilation, b * groups)
    return out.view(b, o, *out.shape[2:])


def _grouped_backward(x, w, grad_out, stride, padding, dilation, groups, need_x: bool):
    b, c = x.shape[:2]
    o = w.shape[1]
    gx, gw, _ = torch.ops.aten.convolution_backward(
        grad_out.reshape(1, b * o, *grad_out.shape[2:]), x.reshape(1, b * c, *x.shape[2:]),
        w.reshape(b * o, *w.shape[2:]), None, list(stride), list(padding), list(dilation), False,
        [0] * (x.dim() - 2), b * groups, [need_x, True, False],
    )
    return (gx.view(x.shape) if need_x else None), gw.view(w.shape)


GROUPED_ENGINE = Engine(_grouped_forward, _grouped_backward)


class FoldedODConv(torch.autograd.Function):
    """y = engine(x, folded_kernel(...)); the backward pass rebuilds the kernel from the saved attentions."""

    @staticmethod
    def forward(ctx, x, weight, channel, filt, spatial, kernel, stride, padding, dilation, groups, engine):
        # The kernel is built in the attentions' precision and only then cast to the input's (bf16 under autocast).
        w = folded_kernel(weight, channel, filt, spatial, kernel, groups, x.shape[0])
        out = engine.forward(x, w.to(x.dtype), stride, padding, dilation, groups)
        ctx.save_for_backward(x, weight, channel, filt, spatial, kernel)
        ctx.conf = (stride, padding, dilation, groups, engine)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        x, weight, channel, filt, spatial, kernel = ctx.saved_tensors
        stride, padding, dilation, groups, engine = ctx.conf
        b = x.shape[0]
        o, kshape = weight.shape[1], weight.shape[2:]
        m, s = _scale(weight, channel, filt, spatial, groups)
        a = _mixed(weight, kernel, b)  # (B or 1, O, I/g, T)
        w = _kernel(a, m, s, b)
        gx, gw = engine.backward(x, w.reshape(b, o, *kshape).to(x.dtype), grad_out, stride, padding, dilation,
                                 groups, ctx.needs_input_grad[0])
        gw = gw.to(weight.dtype).view(b, o, kshape[0], -1)  # dL/dW[b], (B, O, I/g, T)
        g_spatial = g_filt = g_channel = g_kernel = g_weight = None
        ga = gw * s if s is not None else gw
        need_channel = channel is not None and ctx.needs_input_grad[2]
        need_filt = filt is not None and ctx.needs_input_grad[3]
        if need_channel or need_filt:
            gm = (ga * a).sum(-1)  # dL/d(a_f * a_c)[b, o, c] = sum_t gw * a * s
            if need_channel:
                gc = gm * filt[:, :, None] if filt is not None else gm
                g_channel = _reduce_channel(gc, channel.shape[1], groups)
            if need_filt:
                g_filt = (gm * _expand_channel(channel, o, groups)).sum(-1) if channel is not None else gm.sum(-1)
        if spatial is not None and ctx.needs_input_grad[4]:
            gwa = gw * a
            gs = torch.einsum("boct,boc->bt", gwa, m) if m is not None else gwa.sum((1, 2))
            g_spatial = gs.reshape(spatial.shape)
        if ctx.needs_input_grad[1] or (kernel is not None and ctx.needs_input_grad[5]):
            g_a = (ga * m[..., None] if m is not None else ga).reshape(b, -1)  # dL/d(sum_i a_k W_i)[b]
            if ctx.needs_input_grad[1]:
                gwk = g_a.sum(0, keepdim=True) if kernel is None else kernel.t() @ g_a
                g_weight = gwk.view(weight.shape)
            if kernel is not None and ctx.needs_input_grad[5]:
                g_kernel = g_a @ weight.reshape(weight.shape[0], -1).t()
        return gx, g_weight, g_channel, g_filt, g_spatial, g_kernel, None, None, None, None, None


def apply_folded(engine: Engine, x, weight, channel, filt, spatial, kernel, stride, padding, dilation,
                 groups) -> Tensor:
    """The folded per-sample kernel through `engine`, with the memory-saving backward."""
    return apply_autocast(FoldedODConv, x, weight, (channel, filt, spatial, kernel),
                          (tuple(stride), tuple(padding), tuple(dilation), groups, engine))


def odconv2d_folded(x, weight, channel, filt, spatial, kernel, stride, padding, dilation, groups) -> Tensor:
    return apply_folded(GROUPED_ENGINE, x, weight, channel, filt, spatial, kernel, stride, padding, dilation, groups)


FORMULATION = Formulation("folded", odconv2d_folded, any_layer)
