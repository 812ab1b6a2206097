"""A float64 FDConv2d written straightforwardly, to check the layer's forward and every gradient against.

Everything the layer does with FFTs is done here with dense DFT matrices (explicit sums of complex exponentials);
the gates are written out from their definitions; each sample's kernel is assembled on its own and applied with
its own F.conv2d. Only the band partition (`layer.indices`: which spectrum entries share a gate) is read from the
layer, since it is a discrete choice, checked on its own in the tests (disjoint, equal, ordered by radius).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def dft_matrix(n: int, sign: int) -> Tensor:
    """exp(sign * 2*pi*i * a*b / n) for a, b in 0..n-1, complex128."""
    a = torch.arange(n, dtype=torch.float64)
    return torch.exp(sign * 2j * math.pi * torch.outer(a, a) / n)


def rfft2_dense(x: Tensor) -> Tensor:
    """The rfft2 of a real (..., R, C) array: sum_{p,q} x[p,q] exp(-2 pi i (a p / R + j q / C)), j <= C//2."""
    rows, cols = x.shape[-2:]
    return dft_matrix(rows, -1) @ x.to(torch.complex128) @ dft_matrix(cols, -1)[:, : cols // 2 + 1]


def irfft2_dense(spectrum: Tensor, rows: int, cols: int) -> Tensor:
    """The inverse of `rfft2_dense` as torch.fft.irfft2 defines it for any one-sided input: the real part of the
    inverse DFT of the Hermitian extension, i.e. Re(sum_{a,j} c_j S[a,j] exp(2 pi i (a p / R + j q / C))) / (R C)
    with c_j = 1 for the zero (and, C even, the Nyquist) column and 2 for the others."""
    half = cols // 2 + 1
    c = torch.full((half,), 2.0, dtype=torch.float64)
    c[0] = 1.0
    if cols % 2 == 0:
        c[-1] = 1.0
    inverse_cols = c.unsqueeze(1) * dft_matrix(cols, 1)[:half, :]
    return (dft_matrix(rows, 1) @ spectrum @ inverse_cols).real / (rows * cols)


def _float32(v: float) -> float:
    return torch.tensor(v, dtype=torch.float32).item()


def band_masks(h: int, w: int, k_list, grid: int = 64) -> list[Tensor]:
    """The released band masks on an h x (w//2+1) spectrum: the 64 x 64 grid's mask max(|f_h|, |f_w|) < 0.5/k
    picked by nearest neighbour, source index floor(i * 64 / h) (rows) and floor(j * 33 / (w//2+1)) (columns).

    The release compares float32 frequencies (multiples of 1/64, exact) with `0.5 / k + 1e-8`, which PyTorch
    rounds to float32: at 1/4 the 1e-8 is lost (a frequency on the cut-off is above it), at 1/8 and 1/16 it
    rounds up to one float32 step (a frequency on the cut-off is below it)."""
    half_grid = grid // 2 + 1
    fh = torch.tensor([(s if s < grid // 2 else s - grid) / grid for s in (i * grid // h for i in range(h))],
                      dtype=torch.float64)
    fw = torch.tensor([s / grid for s in (j * half_grid // (w // 2 + 1) for j in range(w // 2 + 1))],
                      dtype=torch.float64)
    extent = torch.maximum(fh.abs().unsqueeze(1), fw.abs().unsqueeze(0))
    return [(extent < _float32(0.5 / k + 1e-8)).to(torch.float64) for k in k_list]


def _act(z: Tensor, act: str, multi: float) -> Tensor:
    return 1 / (1 + torch.exp(-z)) * multi if act == "sigmoid" else 1 + torch.tanh(z)


def _linear(p: dict, name: str, v: Tensor) -> Tensor:
    """A 1x1 conv on a (B, C) vector: v W^T (+ b)."""
    out = v @ p[f"{name}.weight"].flatten(1).T
    return out + p[f"{name}.bias"] if f"{name}.bias" in p else out


def _fbm_scale(x: Tensor, p: dict, i: int) -> Tensor:
    """sigmoid(conv(x)) * 2, the i-th band's spatial map (a 'same' conv)."""
    weight = p[f"FBM.freq_weight_conv_list.{i}.weight"]
    return _act(F.conv2d(x, weight, p[f"FBM.freq_weight_conv_list.{i}.bias"], padding=weight.shape[-1] // 2),
                "sigmoid", 2.0)


def reference_fdconv(x: Tensor, layer, p: dict[str, Tensor], training: bool) -> Tensor:
    """FDConv2d's output for float64 `x` from float64 parameters and buffers `p` (names as the layer's)."""
    b, cin, h, w = x.shape
    cout, k = layer.out_channels, layer.kernel_size[0]
    g = layer.KSM_Global
    pooled = x.mean(dim=(2, 3))                                            # (B, C_in)
    # Global trunk: fc -> BatchNorm (batch statistics when training, biased variance) -> StarReLU.
    z = _linear(p, "KSM_Global.fc", pooled)
    if training:
        mean, var = z.mean(0), z.var(0, unbiased=False)
    else:
        mean, var = p["KSM_Global.bn.running_mean"], p["KSM_Global.bn.running_var"]
    z = (z - mean) / torch.sqrt(var + g.bn.eps) * p["KSM_Global.bn.weight"] + p["KSM_Global.bn.bias"]
    hidden = p["KSM_Global.relu.scale"] * torch.clamp(z, min=0) ** 2 + p["KSM_Global.relu.bias"]

    def head(name, temp, multi):
        return _act(_linear(p, f"KSM_Global.{name}", hidden) / temp, g.act_type, multi) \
            if f"KSM_Global.{name}.weight" in p else None
    channel = head("channel_fc", g.temperature, g.att_multi)
    filt = head("filter_fc", g.temperature, g.att_multi)
    spatial = head("spatial_fc", g.temperature, g.att_multi)
    bands = head("kernel_fc", g.kernel_temp, 2.0)
    if bands is not None:
        bands = bands / bands.shape[1]
    if layer.use_ksm_local:
        # LayerNorm over the channels, then the 1-D conv along them (zero padding): logit[o, i] = sum_t w[o, t] *
        # n[i + t - pad].
        mu, sd = pooled.mean(1, keepdim=True), pooled.var(1, unbiased=False, keepdim=True)
        normed = (pooled - mu) / torch.sqrt(sd + layer.KSM_Local.norm.eps) * p["KSM_Local.norm.weight"] \
            + p["KSM_Local.norm.bias"]
        taps = p["KSM_Local.conv.weight"][:, 0, :]                         # (C_out*k*k, t)
        pad = (taps.shape[1] - 1) // 2
        padded = F.pad(normed, (pad, pad))
        local_logit = sum(taps[:, t].view(1, -1, 1) * padded[:, t: t + cin].unsqueeze(1)
                          for t in range(taps.shape[1]))                  # (B, C_out*k*k, C_in)
        local = _act(local_logit.view(b, cout, k, k, cin).permute(0, 1, 4, 2, 3), layer.ksm_local_act,
                     layer.att_multi)                                     # (B, C_out, C_in, k, k)
    if "dft_weight" in p:
        dft = p["dft_weight"]
    else:  # the static weight, transformed: its rfft2 as a (C_out*k, C_in*k) matrix over min//2
        matrix = p["weight"].permute(0, 2, 1, 3).reshape(cout * k, cin * k)
        s = rfft2_dense(matrix)
        dft = torch.stack([s.real, s.imag], -1).unsqueeze(0).repeat(layer.param_ratio, 1, 1, 1) / (min(cout, cin) // 2)
    # x through the frequency band modulation: bands of the orthonormal spectrum, each above the lowest scaled by
    # sigmoid(conv3x3(x)) * 2.
    if hasattr(layer, "FBM"):
        fbm = layer.FBM
        spec = rfft2_dense(x) / math.sqrt(h * w)
        above, xin = x, 0
        for i, mask in enumerate(band_masks(h, w, fbm.k_list)):
            low = irfft2_dense(spec * mask, h, w) * math.sqrt(h * w)
            scale = _fbm_scale(x, p, i)
            xin = xin + scale * (above - low)
            above = low
        if fbm.lowfreq_att:
            j = len(fbm.k_list)
            above = above * _fbm_scale(x, p, j)
        xin = xin + above
    else:
        xin = x
    outs = []
    rows, cols = cout * k, cin * k
    for n in range(b):
        spectrum = torch.zeros(rows, cols // 2 + 1, dtype=torch.complex128)
        for i in range(layer.param_ratio):
            gains = torch.ones(rows, cols // 2 + 1, dtype=torch.float64)
            if bands is not None:
                gains = torch.zeros_like(gains)
                for band, (r, c) in enumerate(zip(*layer.indices[i])):   # entries of band `band`
                    gains = gains.index_put((r, c), bands[n, i * layer.kernel_num + band].expand(r.shape))
            part = dft[i] * layer.alpha * gains.unsqueeze(-1)
            spectrum = spectrum + torch.complex(part[..., 0], part[..., 1])
        kernel = irfft2_dense(spectrum, rows, cols).view(cout, k, cin, k).permute(0, 2, 1, 3)
        if spatial is not None:
            kernel = kernel * spatial[n].view(1, 1, k, k)
        if channel is not None:
            kernel = kernel * channel[n].view(1, cin, 1, 1)
        if filt is not None:
            kernel = kernel * filt[n].view(cout, 1, 1, 1)
        if layer.use_ksm_local:
            kernel = kernel * local[n]
        outs.append(F.conv2d(xin[n: n + 1], kernel, p.get("bias"), layer.stride, layer.padding, layer.dilation))
    return torch.cat(outs)


def exact_copy_float32_tolerance(layers, max_hw: int) -> float:
    """How far, relative to its norm, a float32 network whose FDConv layers (`layers`, exact init) replace static
    convs may compute from the static float32 network, from rounding alone.

    Per layer: the kernel's float32 rfft2/irfft2 round trip over its R x C matrix (an FFT's normwise error is
    about log2(n) unit roundoffs each way; Higham, "Accuracy and Stability of Numerical Algorithms", 24.1), the
    three band splits of the input (3 round trips over at most `max_hw` pixels), and a conv whose sums of
    C_in*k*k terms are accumulated in another order than the static conv's (sqrt(n) unit roundoffs, Higham and
    Mary 2019), each times FLOAT32_SAFETY as in `float32_error_bound`; the layers' errors add along the depth.
    """
    from odconv_reference import FLOAT32_SAFETY, FLOAT32_UNIT_ROUNDOFF

    total = 0.0
    for m in layers:
        k = m.kernel_size[0]
        kernel_roundtrip = 2 * math.log2(m.out_channels * k * m.in_channels * k)
        band_splits = 6 * math.log2(max_hw) if hasattr(m, "FBM") else 0.0
        total += kernel_roundtrip + band_splits + math.sqrt(m.in_channels * k * k)
    return FLOAT32_SAFETY * FLOAT32_UNIT_ROUNDOFF * total
