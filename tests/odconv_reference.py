"""Plain per-sample references for ODConv, CondConv and DyConv, written from the papers' equations, for the tests
to compare against.

Everything is computed from the layer's parameters with explicit tensor algebra (no attention modules, no odconv
functional code) and one `F.conv1d`, `F.conv2d` or `F.conv3d` per sample (by the input's dimensions), so it shares
no code path with the operator under test, whose 1-D layers run as 2-D convs.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from odconv import ODConvNd

CONVS = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


def spatial_dims(x: Tensor) -> tuple[int, ...]:
    """The spatial dimensions of a (B, C, *spatial) tensor, the axes a global average pool reduces."""
    return tuple(range(2, x.dim()))


def per_channel(t: Tensor, dims: int) -> Tensor:
    """A (C,) vector as (1, C, 1, ..., 1), broadcasting over a batch and `dims` spatial dimensions."""
    return t.view(1, -1, *([1] * dims))


def float64_params(layer: nn.Module) -> dict[str, Tensor]:
    """Detached float64 leaf copies of the layer's parameters (requires_grad) and buffers."""
    out = {n: p.detach().double().requires_grad_() for n, p in layer.named_parameters()}
    out.update({n: b.detach().double() for n, b in layer.named_buffers() if b.is_floating_point()})
    return out


def per_sample_conv(
    x: Tensor, layer: nn.Module, p: dict[str, Tensor], mix: Tensor,
    channel: Optional[Tensor] = None, filt: Optional[Tensor] = None, spatial: Optional[Tensor] = None,
) -> Tensor:
    """y[b] = filt[b] * conv(x[b] * channel[b], sum_i mix[b,i] * spatial[b] * W_i) (+ bias), one conv per sample;
    a missing attention is 1."""
    dims = x.dim() - 2
    conv = CONVS[dims]
    outs = []
    for i in range(x.shape[0]):
        s = 1.0 if spatial is None else spatial[i]  # inside the sum, as the paper writes it (and its rounding)
        w = sum(mix[i, j] * s * p["weight"][j] for j in range(p["weight"].shape[0]))
        xi = x[i: i + 1] if channel is None else x[i: i + 1] * per_channel(channel[i], dims)
        y = conv(xi, w, None, layer.stride, layer.padding, layer.dilation, layer.groups)
        if filt is not None:
            y = y * per_channel(filt[i], dims)
        if layer.bias is not None:
            y = y + per_channel(p["bias"], dims)
        outs.append(y)
    return torch.cat(outs)


def reference_odconv(x: Tensor, layer: ODConvNd, p: dict[str, Tensor], training: bool) -> Tensor:
    """y[b] = a_f[b] * conv(x[b] * a_c[b], sum_i a_k[b,i] * a_s[b] * W_i), attention BN in train or eval mode.

    Follows the layer's ablation switches: heads it lacks are 1, the spatial attention a sigmoid per tap or a
    softmax over the taps, the squeeze normalised by BatchNorm, by a layer norm over the hidden units or not at all.
    """
    a = "attention."
    att = layer.attention
    t = float(att.temperature)
    b = x.shape[0]
    if att.fc is None:  # no attention at all: the static conv
        return per_sample_conv(x, layer, p, torch.ones(b, 1, dtype=x.dtype))
    pooled = x.mean(dim=spatial_dims(x))  # (B, C_in)
    h = pooled @ p[a + "fc.weight"].flatten(1).T
    if att.fc.bias is not None:
        h = h + p[a + "fc.bias"]
    if att.bn is not None:
        if training:  # batch statistics, biased variance, as BatchNorm2d in train mode
            mu, var = h.mean(0), h.var(0, unbiased=False)
        else:
            mu, var = p[a + "bn.running_mean"], p[a + "bn.running_var"]
        h = (h - mu) / torch.sqrt(var + att.bn.eps) * p[a + "bn.weight"] + p[a + "bn.bias"]
    elif att.norm is not None:  # per sample, over the hidden units
        mu, var = h.mean(1, keepdim=True), h.var(1, unbiased=False, keepdim=True)
        h = (h - mu) / torch.sqrt(var + att.norm.eps) * p[a + "norm.weight"] + p[a + "norm.bias"]
    h = torch.relu(h)

    def head(name: str) -> Tensor:
        return (h @ p[a + name + ".weight"].flatten(1).T + p[a + name + ".bias"]) / t

    ch = torch.sigmoid(head("channel_fc")) if att.channel_fc is not None else None
    fi = torch.sigmoid(head("filter_fc")) if att.filter_fc is not None else None
    sp = None
    if att.spatial_fc is not None:
        act = torch.sigmoid if att.spatial_act == "sigmoid" else lambda z: torch.softmax(z, dim=1)
        sp = act(head("spatial_fc")).view(b, *layer.kernel_size)
    ke = torch.softmax(head("kernel_fc"), dim=1) if att.kernel_fc is not None else torch.ones(b, 1)
    return per_sample_conv(x, layer, p, ke.to(x.dtype), ch, fi, sp)


def reference_condconv(x: Tensor, layer: nn.Module, p: dict[str, Tensor]) -> Tensor:
    """CondConv (Yang et al. 2019, Eq. 2): y[b] = conv(x[b], sum_i sigmoid(GAP(x[b]) R + c)_i W_i)."""
    routing = torch.sigmoid(x.mean(dim=spatial_dims(x)) @ p["attention.fc.weight"].T + p["attention.fc.bias"])
    return per_sample_conv(x, layer, p, routing)


def reference_dyconv(x: Tensor, layer: nn.Module, p: dict[str, Tensor]) -> Tensor:
    """DyConv (Chen et al. 2020): y[b] = conv(x[b], sum_i pi_i W_i), pi = softmax(W2 relu(W1 GAP(x[b])) / T)."""
    h = torch.relu(x.mean(dim=spatial_dims(x)) @ p["attention.fc1.weight"].T)
    z = h @ p["attention.fc2.weight"].T + p["attention.fc2.bias"]
    return per_sample_conv(x, layer, p, torch.softmax(z / float(layer.attention.temperature), dim=1))


def rel_err(a: Tensor, b: Tensor) -> float:
    """Relative error in the Frobenius norm, the measure float32 rounding is judged by."""
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def assert_matches_reference(layer: nn.Module, x: Tensor, reference, tol: float) -> None:
    """Forward and every gradient (input and each parameter) of `layer` at `x` against `reference(x64, p)`,
    computed in float64 from the layer's parameters `p`, for one random output gradient."""
    x = x.detach().requires_grad_()
    y = layer(x)
    grad_out = torch.randn_like(y)
    y.backward(grad_out)
    p = float64_params(layer)
    x64 = x.detach().double().requires_grad_()
    y_ref = reference(x64, p)
    y_ref.backward(grad_out.double())
    assert y.shape == y_ref.shape
    assert rel_err(y, y_ref) < tol, f"output rel err {rel_err(y, y_ref)}"
    assert rel_err(x.grad, x64.grad) < tol, f"input grad rel err {rel_err(x.grad, x64.grad)}"
    for name, prm in layer.named_parameters():
        assert prm.grad is not None, f"no gradient for {name}"
        err = rel_err(prm.grad, p[name].grad)
        assert err < tol, f"grad of {name}: rel err {err}"


FLOAT32_UNIT_ROUNDOFF = 2.0 ** -24
# Safety factor over the probabilistic model below, for the depth of the computation (attention trunk, heads,
# kernel assembly, conv, and their backward: a dozen roundings in a chain). Over the float32 grid of
# tests/test_fast_odconv.py (every formulation x shape x train/eval, seeds 0-3), the worst error measured on the
# development machine used 0.11 of the bound, the median under 0.01 (`python scripts/float32_margin.py`).
FLOAT32_SAFETY = 10.0


def longest_sum(layer: nn.Module, x: Tensor) -> int:
    """The length of the longest float32 reduction in the layer's forward and backward at input `x`: a conv output
    (C/g*kh*kw terms), a weight gradient (B*Ho*Wo) or an attention gradient (O*C/g*kh*kw); in any number of
    spatial dimensions."""
    taps = math.prod(layer.kernel_size)
    b, c = x.shape[:2]
    pixels_out = math.prod((n - 1) // s + 1 for n, s in zip(x.shape[2:], layer.stride))
    per_tap = c // layer.groups
    return max(b * pixels_out, per_tap * taps, layer.out_channels * per_tap * taps)


def float32_error_bound(layer: nn.Module, x: Tensor, grad_out: Tensor, reference, draws: int = 2,
                        longest: Optional[int] = None) -> dict[str, float]:
    """A machine-independent bound on the float32 relative error of the output, the input gradient and every
    parameter gradient of `layer` at `x` (keys as in the tests: "output", "input grad", "grad of <name>").

    Derived, not measured on this CPU: every input, parameter, buffer and the output gradient is perturbed by an
    independent relative amount of at most u = 2^-24 (float32's unit roundoff), and the change of each quantity is
    computed by `reference(x, params)` in float64 (two draws, the larger kept). That is the error of rounding every
    term once, carried through whatever cancels downstream (the kernel attention's softmax Jacobian makes its
    gradient a small difference of large sums, where float32 loses the most). Accumulating a sum of n such terms
    in float32 adds at most about sqrt(n) times that with high probability (Higham and Mary, "A new approach to
    probabilistic rounding error analysis", SIAM J. Sci. Comput. 2019), so the bound is
    FLOAT32_SAFETY * sqrt(longest_sum) * (the perturbation's effect). Only float64 arithmetic enters it, so it is
    the same on every CPU, whichever float32 kernels the formulation under test meets there. `longest` overrides
    the longest sum for layers `longest_sum` does not describe (KernelWarehouse, DCD, 1-D and 3-D), whose longest
    reduction the caller knows.
    """
    base = float64_params(layer)

    def run(amount: float, seed: int) -> dict[str, Tensor]:
        gen = torch.Generator().manual_seed(seed)

        def perturb(t: Tensor) -> Tensor:
            t = t.detach().double()
            return t * (1 + amount * (2 * torch.rand(t.shape, generator=gen, dtype=t.dtype) - 1))
        p = {n: perturb(v).requires_grad_(v.requires_grad) for n, v in base.items()}
        x64 = perturb(x).requires_grad_()
        y = reference(x64, p)
        y.backward(perturb(grad_out))
        out = {"output": y.detach(), "input grad": x64.grad}
        out.update({f"grad of {n}": p[n].grad for n, _ in layer.named_parameters()})
        return out
    exact = run(0.0, 0)
    effect = dict.fromkeys(exact, 0.0)
    for d in range(draws):
        perturbed = run(FLOAT32_UNIT_ROUNDOFF, 1 + d)
        effect = {k: max(v, rel_err(perturbed[k], exact[k])) for k, v in effect.items()}
    scale = FLOAT32_SAFETY * (longest_sum(layer, x) if longest is None else longest) ** 0.5
    return {k: max(scale * v, 8 * FLOAT32_UNIT_ROUNDOFF) for k, v in effect.items()}
