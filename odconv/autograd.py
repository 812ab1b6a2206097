"""Custom autograd for the folded per-sample kernel: saves only the input and the attentions, not the kernel.

Forward builds ``W[b] = a_f[b] * a_c[b] * a_s[b] * sum_i a_k[b, i] W_i`` (B x O x I/g x kh x kw) and runs it
through an engine (a grouped conv over the batch, or unfold + batched GEMM). Autograd would keep that kernel and
every intermediate of its construction for the backward pass (several times B*O*I*kh*kw floats, 150 MB for one
512-channel 3x3 layer at batch 16); here the backward pass rebuilds it, which costs a few elementwise passes.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from .formulations import im2col_nhwc


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


def _scale(channel, filt, spatial, out_channels: int, groups: int) -> tuple[Tensor, Optional[Tensor]]:
    """Per-sample (B, O, I/g) product a_f * a_c, and the (B, 1, 1, T) spatial factor (None without one)."""
    m = _expand_channel(channel, out_channels, groups)
    if filt is not None:
        m = m * filt[:, :, None]
    s = None if spatial is None else spatial.reshape(spatial.shape[0], 1, 1, -1)
    return m, s


def folded_kernel(weight, channel, filt, spatial, kernel, groups: int) -> Tensor:
    """The per-sample kernel with all four attentions folded in: (B, O, I/g, kh, kw)."""
    b = channel.shape[0]
    m, s = _scale(channel, filt, spatial, weight.shape[1], groups)
    w = _mixed(weight, kernel, b) * m[..., None]
    if s is not None:
        w = w * s
    return w.view(b, *weight.shape[1:])


def _like_input(out: Tensor, x: Tensor) -> Tensor:
    """The GEMM gives a channels_last result; follow the input's memory format as `F.conv2d` does, so the
    layout does not leak into the next layers (and their gradients' strides, which DDP's buckets check)."""
    if x.is_contiguous(memory_format=torch.channels_last) and x.shape[1] > 1:
        return out
    return out.contiguous()


def _as_param_grad(grad: Tensor, param: Tensor) -> Tensor:
    """`grad` in `param`'s dtype and exact strides: DDP's gradient buckets compare strides, including those of
    size-1 dimensions, which `.contiguous()` leaves as they are."""
    if grad.dtype == param.dtype and grad.stride() == param.stride():
        return grad
    return torch.empty_like(param).copy_(grad)


def _is_pointwise(kernel_size, stride, padding) -> bool:
    return tuple(kernel_size) == (1, 1) and tuple(stride) == (1, 1) and tuple(padding) == (0, 0)


def _engine_forward(engine, x, w, stride, padding, dilation, groups):
    b, c, h, wd = x.shape
    o, kh, kw = w.shape[1], w.shape[3], w.shape[4]
    if engine == "grouped":
        out = F.conv2d(x.reshape(1, b * c, h, wd), w.reshape(b * o, *w.shape[2:]), None, stride, padding,
                       dilation, b * groups)
        return out.view(b, o, out.shape[-2], out.shape[-1])
    wm = w.reshape(b, o, -1)
    if _is_pointwise((kh, kw), stride, padding):
        cols = x.flatten(2)  # (B, C, L), a view in either memory format
        if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
            # Rows are pixels: the result is channels_last, like a static conv's on such an input.
            return torch.bmm(cols.transpose(1, 2), wm.transpose(1, 2)).transpose(1, 2).view(b, o, h, wd)
        return torch.bmm(wm, cols).view(b, o, h, wd)
    cols = im2col_nhwc(x, (kh, kw), stride, padding, dilation)  # (B, Ho, Wo, C, T)
    ho, wo = cols.shape[1:3]
    out = torch.bmm(cols.view(b, ho * wo, -1), wm.transpose(1, 2))  # (B, L, O): channels_last
    return _like_input(out.view(b, ho, wo, o).permute(0, 3, 1, 2), x)


def _engine_backward(engine, x, w, grad_out, stride, padding, dilation, groups, need_x: bool):
    """(grad of x or None, grad of the per-sample kernel w) for `_engine_forward`."""
    b, c, h, wd = x.shape
    o, kh, kw = w.shape[1], w.shape[3], w.shape[4]
    if engine == "grouped":
        gx, gw, _ = torch.ops.aten.convolution_backward(
            grad_out.reshape(1, b * o, *grad_out.shape[-2:]), x.reshape(1, b * c, h, wd),
            w.reshape(b * o, *w.shape[2:]), None, list(stride), list(padding), list(dilation), False, [0, 0],
            b * groups, [need_x, True, False],
        )
        return (gx.view(b, c, h, wd) if need_x else None), gw.view(w.shape)
    wm = w.reshape(b, o, -1)
    g = grad_out.reshape(b, o, -1)
    gx = None
    if _is_pointwise((kh, kw), stride, padding):
        cols = x.flatten(2)
        gw = torch.bmm(g, cols.transpose(1, 2)).view(w.shape)
        if need_x:
            gx = torch.bmm(wm.transpose(1, 2), g).view(b, c, h, wd)
        return gx, gw
    cols = im2col_nhwc(x, (kh, kw), stride, padding, dilation)
    ho, wo = cols.shape[1:3]
    gw = torch.bmm(g, cols.view(b, ho * wo, -1)).view(w.shape)
    if need_x:
        gcols = torch.bmm(g.transpose(1, 2), wm).view(b, ho, wo, c, kh * kw)
        gx = _col2im_nhwc(gcols, x.shape, (kh, kw), stride, padding, dilation)
    return gx, gw


class FoldedODConv(torch.autograd.Function):
    """y = engine(x, folded_kernel(...)); the backward pass rebuilds the kernel from the saved attentions."""

    @staticmethod
    def forward(ctx, x, weight, channel, filt, spatial, kernel, stride, padding, dilation, groups, engine):
        # The kernel is built in the attentions' precision and only then cast to the input's (bf16 under autocast).
        w = folded_kernel(weight, channel, filt, spatial, kernel, groups)
        out = _engine_forward(engine, x, w.to(x.dtype), stride, padding, dilation, groups)
        ctx.save_for_backward(x, weight, channel, filt, spatial, kernel)
        ctx.conf = (stride, padding, dilation, groups, engine)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        x, weight, channel, filt, spatial, kernel = ctx.saved_tensors
        stride, padding, dilation, groups, engine = ctx.conf
        b = x.shape[0]
        o, kshape = weight.shape[1], weight.shape[2:]
        m, s = _scale(channel, filt, spatial, o, groups)
        a = _mixed(weight, kernel, b)  # (B or 1, O, I/g, T)
        w = a * m[..., None]
        if s is not None:
            w = w * s
        gx, gw = _engine_backward(engine, x, w.view(b, o, *kshape).to(x.dtype), grad_out, stride,
                                  padding, dilation, groups, ctx.needs_input_grad[0])
        gw = gw.to(weight.dtype).view(b, o, kshape[0], -1)  # dL/dW[b], (B, O, I/g, T)
        g_spatial = g_filt = g_channel = g_kernel = g_weight = None
        # dL/d(a_f * a_c)[b, o, c] = sum_t gw * a * s
        ga = gw * s if s is not None else gw
        gm = (ga * a).sum(-1)
        if spatial is not None and ctx.needs_input_grad[4]:
            g_spatial = torch.einsum("boct,boc->bt", gw * a, m).view(spatial.shape)
        if ctx.needs_input_grad[2]:
            gc = gm * filt[:, :, None] if filt is not None else gm
            g_channel = _reduce_channel(gc, channel.shape[1], groups)
        if filt is not None and ctx.needs_input_grad[3]:
            g_filt = (gm * _expand_channel(channel, o, groups)).sum(-1)
        if ctx.needs_input_grad[1] or (kernel is not None and ctx.needs_input_grad[5]):
            g_a = (ga * m[..., None]).reshape(b, -1)  # dL/d(sum_i a_k W_i)[b]
            if ctx.needs_input_grad[1]:
                gwk = g_a.sum(0, keepdim=True) if kernel is None else kernel.t() @ g_a
                g_weight = gwk.view(weight.shape)
            if kernel is not None and ctx.needs_input_grad[5]:
                g_kernel = g_a @ weight.reshape(weight.shape[0], -1).t()
        return gx, g_weight, g_channel, g_filt, g_spatial, g_kernel, None, None, None, None, None


def odconv2d_folded(x, weight, channel, filt, spatial, kernel, stride, padding, dilation, groups,
                    engine: str = "grouped") -> Tensor:
    """Folded per-sample kernel through `engine` ("grouped" conv or "bmm"), with the memory-saving backward."""
    return _apply_autocast(FoldedODConv, x, weight, (channel, filt, spatial, kernel),
                           (tuple(stride), tuple(padding), tuple(dilation), groups, engine))


def _col2im_nhwc(grad_cols: Tensor, x_shape, kernel_size, stride, padding, dilation) -> Tensor:
    """Adjoint of `im2col_nhwc`: (B, Ho, Wo, C, T) -> (B, C, H, W) (channels_last strides)."""
    b, c, h, w = x_shape
    kh, kw = kernel_size
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    _, ho, wo = grad_cols.shape[:3]
    out = grad_cols.new_zeros(b, h + 2 * ph, w + 2 * pw, c)
    for t in range(kh * kw):
        i, j = divmod(t, kw)
        out[:, i * dh: i * dh + sh * (ho - 1) + 1: sh, j * dw: j * dw + sw * (wo - 1) + 1: sw] += grad_cols[..., t]
    return out[:, ph: ph + h, pw: pw + w].permute(0, 3, 1, 2)


class ColumnsODConv(torch.autograd.Function):
    """`odconv2d_columns` that saves the input and the pre-mix GEMM result, not the (kh*kw times larger)
    columns: the backward pass rebuilds them from the input."""

    @staticmethod
    def forward(ctx, x, weight, channel, filt, spatial, kernel, stride, padding, dilation):
        k, o, c = weight.shape[:3]
        b = x.shape[0]
        cols = im2col_nhwc(x, weight.shape[-2:], stride, padding, dilation)
        _, ho, wo, _, t = cols.shape
        scale = _columns_scale(channel, spatial, t)
        cs = _as_image(cols * scale[:, None, None].to(x.dtype))
        z = F.conv2d(cs, weight.reshape(k * o, c * t, 1, 1).to(x.dtype)).permute(0, 2, 3, 1)
        z = z.reshape(b, ho * wo, k * o)  # a view: the 1x1 conv of a channels_last input is channels_last
        mix = _mix(filt, kernel, b, k, o, x.dtype)
        if mix is None:
            out = z
        elif k == 1:
            out = z * mix[:, 0][:, None]
        else:
            out = (z.view(b, ho * wo, k, o) * mix[:, None]).sum(2)
        ctx.save_for_backward(x, weight, channel, filt, spatial, kernel, z)
        ctx.conf = (stride, padding, dilation)
        return _like_input(out.view(b, ho, wo, o).permute(0, 3, 1, 2), x)

    @staticmethod
    def backward(ctx, grad_out):
        x, weight, channel, filt, spatial, kernel, z = ctx.saved_tensors
        stride, padding, dilation = ctx.conf
        k, o, c = weight.shape[:3]
        b = x.shape[0]
        cols = im2col_nhwc(x, weight.shape[-2:], stride, padding, dilation)
        _, ho, wo, _, t = cols.shape
        l = ho * wo
        g = grad_out.permute(0, 2, 3, 1).reshape(b, l, 1, o).to(z.dtype)
        z4 = z.view(b, l, k, o)
        mix = _mix(filt, kernel, b, k, o, z.dtype)
        g_filt = g_kernel = g_weight = g_channel = g_spatial = gx = None
        if mix is not None:
            # Reductions over the pixels in at least float32, also when the conv runs in bf16.
            acc = torch.promote_types(z.dtype, torch.float32)
            gmix = torch.einsum("blko,blo->bko", z4.to(acc), g[:, :, 0].to(acc))  # dL/d mix
            if filt is not None and ctx.needs_input_grad[3]:
                g_filt = (gmix * (kernel[:, :, None] if kernel is not None else 1.0)).sum(1).to(filt.dtype)
            if kernel is not None and ctx.needs_input_grad[5]:
                g_kernel = (gmix * (filt[:, None, :] if filt is not None else 1.0)).sum(2).to(kernel.dtype)
            gz = (g * mix[:, None]).reshape(b, l, k * o)
        else:
            gz = g.reshape(b, l, o)
        scale = _columns_scale(channel, spatial, t).to(x.dtype)  # (B, C, T)
        w1 = weight.reshape(k * o, c * t, 1, 1).to(x.dtype)
        cs = _as_image(cols * scale[:, None, None])
        gcs, gw1, _ = torch.ops.aten.convolution_backward(
            gz.reshape(b, ho, wo, k * o).permute(0, 3, 1, 2), cs, w1, None, [1, 1], [0, 0], [1, 1], False, [0, 0],
            1, [True, ctx.needs_input_grad[1], False])
        if ctx.needs_input_grad[1]:
            g_weight = gw1.view(weight.shape).to(weight.dtype)
        gcs = gcs.permute(0, 2, 3, 1).reshape(b, ho, wo, c, t)  # dL/d scaled columns
        acc = torch.promote_types(x.dtype, torch.float32)
        gscale = torch.einsum("bhwct,bhwct->bct", gcs.to(acc), cols.to(acc))
        if ctx.needs_input_grad[2]:
            g_channel = (gscale * spatial.reshape(b, 1, t) if spatial is not None else gscale).sum(2)
            g_channel = g_channel.to(channel.dtype)
        if spatial is not None and ctx.needs_input_grad[4]:
            g_spatial = (gscale * channel[:, :, None]).sum(1).view(spatial.shape).to(spatial.dtype)
        if ctx.needs_input_grad[0]:
            gx = _col2im_nhwc(gcs * scale[:, None, None], x.shape, weight.shape[-2:], stride, padding, dilation)
        return gx, g_weight, g_channel, g_filt, g_spatial, g_kernel, None, None, None


def _as_image(cols: Tensor) -> Tensor:
    """(B, Ho, Wo, C, T) columns as a channels_last (B, C*T, Ho, Wo) image, so the shared GEMM runs as a 1x1
    conv: oneDNN's 1x1 conv does 230 GMAC/s on this project's 2-core AMD machine where MKL's sgemm does 100."""
    b, ho, wo = cols.shape[:3]
    return cols.reshape(b, ho, wo, -1).permute(0, 3, 1, 2)


def _columns_scale(channel: Tensor, spatial: Optional[Tensor], taps: int) -> Tensor:
    """a_c (x) a_s per sample: (B, C, T), the factor on each column of the unfolded input."""
    if spatial is None:
        return channel[:, :, None]
    return channel[:, :, None] * spatial.reshape(spatial.shape[0], 1, taps)


def _mix(filt, kernel, b: int, k: int, o: int, dtype) -> Optional[Tensor]:
    """a_k (x) a_f per sample: (B, K, O), the factor on each of the K GEMM results; None if both are 1."""
    if filt is None and kernel is None:
        return None
    if kernel is None:
        return filt[:, None, :].to(dtype)
    m = kernel[:, :, None] if filt is None else kernel[:, :, None] * filt[:, None, :]
    return m.to(dtype)


def odconv2d_columns_saving(x, weight, channel, filt, spatial, kernel, stride, padding, dilation, groups) -> Tensor:
    """`columns` formulation with the memory-saving backward (groups == 1)."""
    if groups != 1:
        raise ValueError("the 'columns' formulation needs groups == 1")
    return _apply_autocast(ColumnsODConv, x, weight, (channel, filt, spatial, kernel),
                           (tuple(stride), tuple(padding), tuple(dilation)))


def _apply_autocast(fn, x, weight, atts, conf):
    device_type = x.device.type
    if torch.is_autocast_enabled(device_type):
        # Ops inside an autograd function would each be autocast on their own; instead cast the input once
        # here (recorded by autograd) and run the function in that precision, weight and attentions in theirs.
        dtype = torch.get_autocast_dtype(device_type)
        with torch.autocast(device_type, enabled=False):
            atts = [None if a is None else a.to(weight.dtype) for a in atts]
            return fn.apply(x.to(dtype), weight, *atts, *conf)
    return fn.apply(x, weight, *atts, *conf)
