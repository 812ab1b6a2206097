"""What every ODConv formulation shares: the layer description the registry and dispatch look at, the registry's
entry type, and the tensor helpers used by more than one formulation."""
from __future__ import annotations

from typing import Callable, NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import Tensor


class LayerShape(NamedTuple):
    """One call of the functional core as the dispatch sees it: shapes and which attentions are present.

    A 3-D call has its input's `depth` set (and 3-tuples for kernel_size and stride); it is None for 2-D calls,
    1-D layers included (they run as 2-D calls over a (1, L) map).
    """

    batch: int
    in_channels: int
    out_channels: int
    height: int
    width: int
    kernel_size: tuple[int, ...]
    stride: tuple[int, ...]
    groups: int
    kernel_num: int
    has_spatial: bool
    has_channel: bool = True
    has_filter: bool = True
    depth: Optional[int] = None

    @property
    def dims(self) -> int:
        """Spatial dimensions of the call: 2, or 3 for a 3-D call."""
        return 2 if self.depth is None else 3

    @classmethod
    def of_call(cls, x: Tensor, weight: Tensor, channel, filt, spatial, kernel, stride, groups: int) -> "LayerShape":
        """The shape of `odconv2d(x, weight, channel, filt, spatial, kernel, stride, ..., groups)` (plain Python
        on sizes, so it traces under torch.compile and torch.export without a graph break)."""
        k, o = weight.shape[:2]
        return cls(x.shape[0], x.shape[1], o, x.shape[-2], x.shape[-1], tuple(weight.shape[3:]), tuple(stride),
                   groups, k, spatial is not None, channel is not None, filt is not None,
                   x.shape[-3] if x.dim() == 5 else None)


# fn(x, weight, channel, filt, spatial, kernel, stride, padding, dilation, groups) -> output without bias.
CoreFn = Callable[..., Tensor]


class Formulation(NamedTuple):
    """A registry entry: a way of computing one ODConv layer and the layers it can compute."""

    name: str
    fn: CoreFn
    can_compute: Callable[[LayerShape], bool]


def any_layer(shape: LayerShape) -> bool:
    return True


def ungrouped(shape: LayerShape) -> bool:
    """groups == 1, two spatial dimensions (the GEMM-based formulations are written for 2-D maps)."""
    return shape.groups == 1 and shape.depth is None


def trailing(t: Tensor, dims: int) -> Tensor:
    """A (B, C) attention as (B, C, 1, ..., 1), broadcasting over `dims` spatial dimensions."""
    return t.view(*t.shape, *([1] * dims))


def conv_nd(x: Tensor, weight: Tensor, bias, stride, padding, dilation, groups: int) -> Tensor:
    """`F.conv1d`, `F.conv2d` or `F.conv3d`, by the input's dimensions."""
    conv = {3: F.conv1d, 4: F.conv2d, 5: F.conv3d}[x.dim()]
    return conv(x, weight, bias, stride, padding, dilation, groups)


def apply_autocast(fn, x: Tensor, weight: Tensor, atts, conf) -> Tensor:
    """`fn.apply(x, weight, *atts, *conf)` for an autograd function, autocast-aware.

    Ops inside an autograd function would each be autocast on their own; instead the input is cast once here
    (recorded by autograd) and the function runs in that precision, weight and attentions in theirs.
    """
    device_type = x.device.type
    if torch.is_autocast_enabled(device_type):
        dtype = torch.get_autocast_dtype(device_type)
        with torch.autocast(device_type, enabled=False):
            atts = [None if a is None else a.to(weight.dtype) for a in atts]
            return fn.apply(x.to(dtype), weight, *atts, *conf)
    return fn.apply(x, weight, *atts, *conf)


def like_input(out: Tensor, x: Tensor) -> Tensor:
    """The GEMM gives a channels_last result; follow the input's memory format as `F.conv2d` does, so the
    layout does not leak into the next layers (and their gradients' strides, which DDP's buckets check)."""
    if x.is_contiguous(memory_format=torch.channels_last) and x.shape[1] > 1:
        return out
    return out.contiguous()


def as_param_grad(grad: Tensor, param: Tensor) -> Tensor:
    """`grad` in `param`'s dtype and exact strides: DDP's gradient buckets compare strides, including those of
    size-1 dimensions, which `.contiguous()` leaves as they are."""
    if grad.dtype == param.dtype and grad.stride() == param.stride():
        return grad
    return torch.empty_like(param).copy_(grad)


def output_mix(filt: Optional[Tensor], kernel: Optional[Tensor], b: int, k: int, o: int, dtype) -> Optional[Tensor]:
    """a_k (x) a_f per sample: (B, K, O), the factor on each of K per-kernel outputs; None if both are 1."""
    if filt is None and kernel is None:
        return None
    if kernel is None:
        return filt[:, None, :].to(dtype)
    m = kernel[:, :, None] if filt is None else kernel[:, :, None] * filt[:, None, :]
    return m.to(dtype)


def scale_input(x: Tensor, channel: Optional[Tensor]) -> Tensor:
    """x * a_c (x itself when the layer has no channel attention)."""
    return x if channel is None else x * channel[:, :, None, None].to(x.dtype)


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


def col2im_nhwc(grad_cols: Tensor, x_shape, kernel_size, stride, padding, dilation) -> Tensor:
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
