"""FDConv2d (frequency dynamic convolution) against its float64 reference, its gating, its band partition, the
released state-dict layout and the converters from static convs and checkpoints."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fdconv_reference import band_masks, exact_copy_float32_tolerance, irfft2_dense, reference_fdconv, rfft2_dense
from models.resnet import ResNet
from odconv import (
    FDConv2d, convert_to_fdconv, create_dynamic_conv, released_fdconv_state_dict, static_to_fdconv_state_dict,
)
from odconv.fdconv import dft_weight_from_weight
from odconv.fdconv_modules import FrequencyBandModulation, eca_kernel_size
from odconv_reference import float32_error_bound, float64_params, rel_err

# name: (in, out, kernel, stride, batch, height, width, layer kwargs). "on-kernel"/"on-features": the two places
# the released layer applies the channel and filter gates (kernel smaller than the feature maps, or not).
CASES = {
    "3x3-on-features": (32, 48, 3, 1, 2, 8, 8, dict(kernel_num=8)),
    "3x3-on-kernel": (32, 24, 3, 1, 2, 16, 16, dict(kernel_num=8)),
    "1x1": (48, 32, 1, 1, 3, 7, 7, dict(kernel_num=16)),
    "stride2-ratio2-tanh": (32, 32, 3, 2, 2, 9, 7, dict(kernel_num=4, param_ratio=2, ksm_global_act="tanh",
                                                        ksm_local_act="tanh")),
    "weight-param-lowfreq": (32, 40, 3, 1, 2, 6, 10, dict(kernel_num=8, convert_param=False,
                                                          fbm_cfg=dict(lowfreq_att=True))),
    "bands-only": (24, 32, 3, 1, 2, 8, 8, dict(kernel_num=4, ksm_only_kernel_att=True, use_ksm_local=False)),
    # maps smaller than the kernel: only the taps that see data are kept after the inverse FFT (the centre on a
    # 1x1 map, as in ResNet18's last stage at 32px; the middle row on a 1-pixel-high map)
    "3x3-on-1x1-map": (32, 48, 3, 1, 3, 1, 1, dict(kernel_num=8)),
    "3x3-on-1-row": (32, 24, 3, 1, 2, 1, 6, dict(kernel_num=4, param_ratio=2)),
}


def _layer(name: str, dtype=torch.float64) -> tuple[FDConv2d, torch.Tensor]:
    cin, cout, k, s, b, h, w, kwargs = CASES[name]
    torch.manual_seed(0)
    layer = FDConv2d(cin, cout, k, s, k // 2, bias=True, **kwargs)
    with torch.no_grad():  # gates away from their initial ~1, so that every path carries weight
        for n, p in layer.named_parameters():
            if n not in ("dft_weight", "weight"):
                p.add_(0.3 * torch.randn_like(p))
    x = torch.randn(b, cin, h, w)
    return layer.to(dtype), x.to(dtype)


def _errors(layer, x, training):
    layer.train(training)
    x = x.detach().requires_grad_()
    y = layer(x)
    grad_out = torch.randn_like(y)
    y.backward(grad_out)
    p = float64_params(layer)
    x64 = x.detach().double().requires_grad_()
    y_ref = reference_fdconv(x64, layer, p, training)
    y_ref.backward(grad_out.double())
    errors = {"output": rel_err(y, y_ref), "input grad": rel_err(x.grad, x64.grad)}
    errors.update({f"grad of {n}": rel_err(q.grad, p[n].grad) for n, q in layer.named_parameters()})
    return errors, grad_out


def fdconv_sum_length(layer: FDConv2d, x: torch.Tensor) -> int:
    """The longest float32 sum in the layer at `x`: a conv output or weight gradient, an inverse DFT of the kernel
    spectrum ((C_out*k) x (C_in*k) terms), a DFT of a feature map (h*w) or a gate gradient (C_out*C_in*k*k)."""
    k = layer.kernel_size[0]
    b, c, h, w = x.shape
    return max(b * h * w, c * k * k, layer.out_channels * c * k * k, layer.out_channels * k * c * k, h * w)


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("name", list(CASES))
def test_matches_float64_reference_exactly(name, training):
    # In float64 a slip in the layer shows as an error far above rounding: the check of correctness.
    layer, x = _layer(name)
    errors, _ = _errors(layer, x, training)
    bad = {k: v for k, v in errors.items() if not v < 1e-10}
    assert not bad, f"{name}: relative errors above float64 rounding: {bad}"


@pytest.mark.parametrize("name", ["3x3-on-features", "3x3-on-kernel", "1x1"])
def test_float32_within_derived_bound(name, monkeypatch):
    layer, x = _layer(name, torch.float32)
    errors, grad_out = _errors(layer, x, True)
    import odconv_reference
    monkeypatch.setattr(odconv_reference, "longest_sum", fdconv_sum_length)
    allowed = float32_error_bound(layer, x, grad_out, lambda x64, p: reference_fdconv(x64, layer, p, True))
    bad = {k: (v, allowed[k]) for k, v in errors.items() if not v < allowed[k]}
    assert not bad, f"{name}: (relative error, allowed) above float32 rounding: {bad}"


def test_dense_dft_helpers_match_torch_fft():
    torch.manual_seed(0)
    for rows, cols in [(6, 8), (5, 7), (4, 9)]:
        x = torch.randn(2, rows, cols, dtype=torch.float64)
        spectrum = torch.fft.rfft2(x)
        assert torch.allclose(rfft2_dense(x), spectrum, atol=1e-12)
        # irfft2 on a one-sided spectrum that is not Hermitian in its zero column: torch ignores what the
        # reference's Re(.) with the doubled columns ignores.
        noisy = spectrum + 1j * torch.randn_like(x[..., : cols // 2 + 1])
        assert torch.allclose(irfft2_dense(noisy, rows, cols), torch.fft.irfft2(noisy, s=(rows, cols)), atol=1e-12)


@pytest.mark.parametrize("size", [(8, 8), (13, 13), (6, 10), (16, 31), (64, 64), (40, 17)])
def test_band_masks_follow_the_released_rule(size):
    h, w = size
    fbm = FrequencyBandModulation(4)
    layer_masks = F.interpolate(fbm.cached_masks.double(), size=(h, w // 2 + 1), mode="nearest")[:, 0]
    for got, want in zip(layer_masks, band_masks(h, w, fbm.k_list)):
        assert torch.equal(got, want)


@pytest.mark.parametrize("shape", [(64, 64, 3, 64), (256, 64, 1, 64), (48, 32, 3, 16), (64, 128, 1, 8)])
def test_bands_are_disjoint_equal_and_ordered_by_radius(shape):
    cout, cin, k, kernel_num = shape
    layer = FDConv2d(cin, cout, k, padding=k // 2, kernel_num=kernel_num)
    rows, cols = cout * k, cin * k
    idx = layer.indices[0]                                                  # (2, bands, entries per band)
    flat = (idx[0] * (cols // 2 + 1) + idx[1]).flatten()
    assert torch.equal(flat.sort().values, torch.arange(rows * (cols // 2 + 1)))    # a partition of the spectrum
    fr = torch.tensor([(a if a < (rows + 1) // 2 else a - rows) / rows for a in range(rows)], dtype=torch.float64)
    fc = torch.arange(cols // 2 + 1, dtype=torch.float64) / cols
    radius = (fr[idx[0]] ** 2 + fc[idx[1]] ** 2).sqrt()                     # (bands, entries)
    # Each band lies at radii no smaller than the previous one's (to float32 resolution of the radii).
    assert bool((radius[1:].min(dim=1).values >= radius[:-1].max(dim=1).values - 1e-6).all())


def test_gating_rules():
    assert FDConv2d(64, 64, 3, padding=1).is_dynamic
    assert FDConv2d(17, 64, 1).is_dynamic                       # channels above 16
    for args in [(16, 64, 3), (64, 16, 1), (64, 64, 5), (64, 64, 7)]:
        layer = FDConv2d(*args)
        assert not layer.is_dynamic and "weight" in dict(layer.named_parameters())
        assert not hasattr(layer, "KSM_Global")
        x = torch.randn(1, args[0], 9, 9)
        assert torch.equal(layer(x), F.conv2d(x, layer.weight, layer.bias))
    assert not FDConv2d(64, 64, 3, groups=2).is_dynamic          # the released dense kernel cannot run groups
    assert hasattr(FDConv2d(64, 64, 3), "FBM") and not hasattr(FDConv2d(64, 64, 1), "FBM")
    assert hasattr(FDConv2d(64, 64, 1, stride=2, use_fbm_for_stride=True), "FBM")
    with pytest.raises(ValueError, match="kernel_num=7 must divide"):
        FDConv2d(64, 64, 1, kernel_num=7)
    with pytest.raises(ValueError, match="fbm_cfg entries"):
        FDConv2d(64, 64, 3, fbm_cfg=dict(act="tanh"))
    with pytest.raises(ValueError, match="param_reduction"):
        FDConv2d(64, 64, 3, param_reduction=0.5)
    with pytest.raises(ValueError, match="batch of one sample"):
        FDConv2d(64, 64, 3).train()(torch.randn(1, 64, 5, 5))


def test_released_parameter_names_and_shapes():
    layer = FDConv2d(64, 256, 1, bias=False, kernel_num=64)
    shapes = {n: tuple(t.shape) for n, t in layer.state_dict().items()}
    att = max(int(64 * 0.0625), 16)
    assert shapes["dft_weight"] == (1, 256, 33, 2)                    # layer1.0.conv3 of ResNet50
    assert shapes["KSM_Global.fc.weight"] == (att, 64, 1, 1)
    assert shapes["KSM_Global.relu.scale"] == (1,) and shapes["KSM_Global.relu.bias"] == (1,)
    assert shapes["KSM_Global.filter_fc.weight"] == (256, att, 1, 1)
    assert shapes["KSM_Global.kernel_fc.weight"] == (64, att, 1, 1)
    assert "KSM_Global.spatial_fc.weight" not in shapes and not any(n.startswith("FBM") for n in shapes)
    assert shapes["KSM_Local.conv.weight"] == (256, 1, eca_kernel_size(64))
    assert shapes["KSM_Local.norm.weight"] == (64,)
    assert "indices" not in shapes and "cached_masks" not in shapes and "weight" not in shapes
    conv2 = FDConv2d(64, 64, 3, padding=1, bias=False, kernel_num=64).state_dict()
    assert tuple(conv2["dft_weight"].shape) == (1, 192, 97, 2)
    assert tuple(conv2["FBM.freq_weight_conv_list.2.weight"].shape) == (1, 64, 3, 3)
    assert [eca_kernel_size(c) for c in (32, 64, 256, 512, 1024, 2048)] == [3, 5, 5, 5, 7, 7]


def test_factory_builds_fdconv_without_bias():
    layer = create_dynamic_conv("fd", 64, 64, 3, padding=1, kernel_num=16)
    assert isinstance(layer, FDConv2d) and layer.bias is None and layer.kernel_num == 16


def _static_resnet(dtype):
    torch.manual_seed(0)
    net = ResNet(18, num_classes=10, dropout=0.0).to(dtype).eval()
    with torch.no_grad():  # BN statistics away from the identity, as in a trained network
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return net


def _converted(net, gate_init):
    fd = convert_to_fdconv(copy.deepcopy(net), gate_init=gate_init, kernel_num=64).eval()
    return fd, [m for m in fd.modules() if isinstance(m, FDConv2d)]


@pytest.mark.slow
def test_exact_copy_conversion_gives_the_static_network():
    x = torch.randn(2, 3, 32, 32)
    for dtype in (torch.float64, torch.float32):
        static = _static_resnet(dtype)
        fd, layers = _converted(static, "exact")
        assert len(layers) == 16                  # every block conv of ResNet18; stem and shortcuts static
        with torch.no_grad():
            want, got = static(x.to(dtype)), fd(x.to(dtype))
        if dtype == torch.float64:
            assert rel_err(got, want) < 1e-10     # the same function, exactly
        else:
            assert rel_err(got, want) < exact_copy_float32_tolerance(layers, max_hw=8 * 8)


@pytest.mark.slow
def test_released_init_conversion_scales_each_output_channel_by_the_filter_gate():
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    static = _static_resnet(torch.float64)
    fd, _ = _converted(static, "released")
    with torch.no_grad():
        assert rel_err(fd(x), static(x)) > 0.05      # not the static network: the filter gates are random
    # Layer by layer, the released init computes the static conv times the filter gate sigmoid(filter_fc(.)) * 2
    # (random per sample and output channel); every other gate is within ~1e-6 of 1 (its 1e-6 weights).
    layer = fd.layer2[0].conv2
    conv = static.layer2[0].conv2
    feats = torch.randn(2, layer.in_channels, 12, 12, dtype=torch.float64).relu()   # post-ReLU, as in the net
    with torch.no_grad():
        pooled = F.adaptive_avg_pool2d(feats, 1)
        channel, filt, spatial, bands = layer.KSM_Global(pooled)
        local = torch.sigmoid(layer.KSM_Local(pooled)) * 2
        fbm = [torch.sigmoid(c(feats)) * 2 for c in layer.FBM.freq_weight_conv_list]
        # How far the other gates are from 1; to first order the kernel is the static one times factors within
        # that of 1 (the margin 10 covers cancellation in the conv sums).
        others = [channel, spatial, bands * layer.kernel_num, local, *fbm]
        deviation = sum(float((g - 1).abs().max()) for g in others)
        assert 0 < deviation < 1e-3
        want = conv(feats) * filt.view(2, -1, 1, 1)
        assert rel_err(layer(feats), want) < 10 * deviation
        assert rel_err(layer(feats), conv(feats)) > 0.05
        assert float((filt - 1).abs().max()) > 0.1


def test_checkpoint_converters():
    static = _static_resnet(torch.float32)
    fd, _ = _converted(static, "released")
    converted = static_to_fdconv_state_dict(static.state_dict(), fd)
    missing, unexpected = fd.load_state_dict(converted, strict=False)
    assert not unexpected and all(("KSM_" in k or "FBM" in k) for k in missing)   # only the modulation is new
    assert torch.allclose(fd.layer1[0].conv1.dft_weight, dft_weight_from_weight(static.layer1[0].conv1.weight))
    released = released_fdconv_state_dict(static.state_dict())
    # The released tool's threshold (>= 32 channels) and names: every block conv of ResNet18, not the 7x7 stem.
    assert set(released) - set(converted) == set() and "conv1.weight" in released
    assert torch.equal(released["layer4.1.conv2.dft_weight"], converted["layer4.1.conv2.dft_weight"])
    with pytest.raises(KeyError, match="layer1.0.conv1"):
        static_to_fdconv_state_dict({}, fd)


def test_exact_init_gates_are_one_and_training_moves_them():
    torch.manual_seed(0)
    layer = FDConv2d(32, 32, 3, padding=1, kernel_num=8, gate_init="exact")
    conv = nn.Conv2d(32, 32, 3, padding=1)
    with torch.no_grad():
        layer.dft_weight.copy_(dft_weight_from_weight(conv.weight))
        layer.bias.copy_(conv.bias)
    x = torch.randn(2, 32, 10, 10)
    tol = exact_copy_float32_tolerance([layer], max_hw=10 * 10)
    assert rel_err(layer(x), conv(x)) < tol
    opt = torch.optim.SGD(layer.parameters(), lr=0.1)
    for _ in range(2):
        opt.zero_grad()
        layer(x).square().mean().backward()
        opt.step()
    assert float(layer.KSM_Global.filter_fc.weight.detach().abs().max()) > 0
    assert float(layer.KSM_Local.conv.weight.detach().abs().max()) > 0
    with pytest.raises(ValueError, match="gate_init"):
        FDConv2d(32, 32, 3, gate_init="copy")
    with pytest.raises(ValueError, match="param_ratio=1"):
        FDConv2d(32, 32, 3, param_ratio=2, gate_init="exact")
    # One band (no band gate) or the band gate alone: still the static conv at initialisation.
    for kwargs in (dict(kernel_num=1), dict(kernel_num=8, ksm_only_kernel_att=True, use_ksm_local=False)):
        single = FDConv2d(32, 32, 3, padding=1, gate_init="exact", **kwargs).eval()
        with torch.no_grad():
            single.dft_weight.copy_(dft_weight_from_weight(conv.weight))
            single.bias.copy_(conv.bias)
            assert rel_err(single(x), conv(x)) < exact_copy_float32_tolerance([single], max_hw=10 * 10)


@pytest.mark.parametrize("name, taps", [("3x3-on-1x1-map", (1, 1)), ("3x3-on-1-row", (1, 3)), ("3x3-on-features", (3, 3))])
def test_only_the_taps_that_see_data_are_gated_and_convolved(name, taps, monkeypatch):
    """The float64 test above covers these cases' outputs and gradients; here, that the kernel really is cut."""
    layer, x = _layer(name)
    kernels = []
    conv2d = torch.nn.functional.conv2d

    def recorded(inp, weight, *args):
        kernels.append(tuple(weight.shape[-2:]))
        return conv2d(inp, weight, *args)

    monkeypatch.setattr(torch.nn.functional, "conv2d", recorded)
    layer.train()(x)
    assert kernels[-1] == taps  # the last conv2d call is the layer's own (FBM and the gates run theirs first)
