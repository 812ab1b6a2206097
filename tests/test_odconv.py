"""ODConv2d against the float64 per-sample reference, plus its constructor, temperature and conversion."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

import models
import odconv
from odconv import ODConv2d
from odconv_reference import assert_matches_reference, reference_odconv

# (in, out, kernel, stride, padding, dilation, groups, kernel_num, batch, height, width). Batch 4: in train mode
# the attention BN normalises B pooled vectors, and with B = 2 the problem is so ill-conditioned that float32
# rounding alone puts the fc gradient 4e-5 away from float64 (measured), whatever the formulation.
SHAPES = {
    "3x3": (16, 24, 3, 1, 1, 1, 1, 4, 4, 9, 9),
    "3x3-k1": (16, 24, 3, 1, 1, 1, 1, 1, 4, 8, 8),
    "stride2": (16, 32, 3, 2, 1, 1, 1, 4, 4, 11, 11),
    "dilation2": (8, 8, 3, 1, 2, 2, 1, 2, 4, 10, 10),
    "grouped": (16, 32, 3, 1, 1, 1, 4, 4, 4, 7, 7),
    "depthwise": (24, 24, 3, 1, 1, 1, 24, 4, 4, 8, 8),
    "depthwise-k1-stride2": (24, 24, 3, 2, 1, 1, 24, 1, 4, 9, 9),
    "1x1-k1": (32, 16, 1, 1, 0, 1, 1, 1, 4, 6, 6),
    "1x1-k4": (32, 16, 1, 1, 0, 1, 1, 4, 4, 6, 6),
    "5x5-odd": (12, 20, 5, 1, 2, 1, 1, 3, 4, 13, 7),
    "rect-kernel": (8, 12, (3, 1), 1, (1, 0), 1, 1, 2, 4, 9, 5),
}


def _layer(shape, bias=False):
    cin, cout, k, s, p, d, g, kn, *_ = shape
    torch.manual_seed(0)
    layer = ODConv2d(cin, cout, k, s, p, d, g, kernel_num=kn, bias=bias)
    with torch.no_grad():  # non-trivial attentions and BN statistics, so every factor matters
        for name, prm in layer.attention.named_parameters():
            prm.add_(0.3 * torch.randn_like(prm))
        layer.attention.bn.running_mean.normal_()
        layer.attention.bn.running_var.uniform_(0.5, 2.0)
    layer.update_temperature(1.7)
    return layer


def _check(layer, x, training, tol):
    layer.train(training)
    assert_matches_reference(layer, x, lambda x64, p: reference_odconv(x64, layer, p, training), tol)


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("name", list(SHAPES))
def test_matches_per_sample_reference_float32(name, training):
    shape = SHAPES[name]
    layer = _layer(shape)
    b, h, w = shape[-3:]
    _check(layer, torch.randn(b, shape[0], h, w), training, tol=1e-5)


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("name", ["3x3", "grouped", "depthwise", "1x1-k4"])
def test_matches_reference_float64_exactly(name, training):
    shape = SHAPES[name]
    layer = _layer(shape).double()
    b, h, w = shape[-3:]
    _check(layer, torch.randn(b, shape[0], h, w, dtype=torch.float64), training, tol=1e-12)


@pytest.mark.parametrize("name", ["3x3", "1x1-k1", "depthwise"])
def test_channels_last_input(name):
    shape = SHAPES[name]
    layer = _layer(shape)
    b, h, w = shape[-3:]
    x = torch.randn(b, shape[0], h, w).to(memory_format=torch.channels_last)
    _check(layer, x, training=True, tol=1e-5)


def test_batch_of_one_in_eval_mode():
    shape = SHAPES["stride2"]
    _check(_layer(shape), torch.randn(1, shape[0], 11, 11), training=False, tol=1e-5)


def test_bias_is_added_after_filter_attention():
    shape = SHAPES["3x3"]
    layer = _layer(shape, bias=True)
    with torch.no_grad():
        layer.bias.normal_()
    _check(layer, torch.randn(2, shape[0], 9, 9), training=True, tol=1e-5)


def test_output_size_follows_conv2d_arithmetic():
    for name, (cin, cout, k, s, p, d, g, kn, b, h, w) in SHAPES.items():
        layer = ODConv2d(cin, cout, k, s, p, d, g, kernel_num=kn).eval()
        ref = nn.Conv2d(cin, cout, k, s, p, d, g, bias=False)
        x = torch.randn(b, cin, h, w)
        assert layer(x).shape == ref(x).shape, name


def test_wide_depthwise_and_pointwise_layers_widen_or_drop_attention_heads():
    """The default layer's whole state-dict layout (names and shapes, loaded strictly) is pinned in
    test_ablations.py::test_defaults_are_the_released_layer_and_load_released_keys; here the layers that differ."""
    wide = ODConv2d(512, 512, 3, padding=1, kernel_num=1)
    assert wide.attention.fc.out_channels == 32  # int(512 * 0.0625), above the floor of 16
    dw = ODConv2d(32, 32, 3, padding=1, groups=32, kernel_num=1)
    assert dw.attention.filter_fc is None and dw.weight.shape == (1, 32, 1, 3, 3)  # one filter per group
    pw = ODConv2d(32, 64, 1, kernel_num=1)
    assert pw.attention.spatial_fc is None  # one tap: nothing to weight


def test_initialisation_is_the_released_one():
    torch.manual_seed(0)
    layer = ODConv2d(64, 256, 3, padding=1, kernel_num=4)
    fan_out = 256 * 9
    for i in range(4):  # each kernel has He (fan_out) std
        assert abs(layer.weight[i].std().item() - (2 / fan_out) ** 0.5) < 0.05 * (2 / fan_out) ** 0.5
    for name, prm in layer.attention.named_parameters():
        if name.endswith("fc.bias"):
            assert torch.count_nonzero(prm) == 0, name
    assert torch.all(layer.attention.bn.weight == 1) and torch.all(layer.attention.bn.bias == 0)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(in_channels=10, out_channels=8, kernel_size=3, groups=4), "in_channels must be divisible by groups"),
        (dict(in_channels=8, out_channels=10, kernel_size=3, groups=4), "out_channels must be divisible by groups"),
        (dict(in_channels=8, out_channels=8, kernel_size=3, kernel_num=0), "kernel_num must be at least 1"),
        (dict(in_channels=8, out_channels=8, kernel_size=3, reduction=0.0), "reduction must be positive"),
        (dict(in_channels=8, out_channels=8, kernel_size=3, reduction=-1), "reduction must be positive"),
        (dict(in_channels=8, out_channels=8, kernel_size=3, padding="full"), "Invalid padding string 'full'"),
        (dict(in_channels=8, out_channels=8, kernel_size=3, groups=0), "groups must be a positive integer"),
    ],
)
def test_invalid_arguments_raise_value_error(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ODConv2d(**kwargs)


def test_tuple_and_int_arguments_are_equivalent():
    torch.manual_seed(0)
    a = ODConv2d(8, 8, 3, 2, 1, 1, kernel_num=2)
    torch.manual_seed(0)
    b = ODConv2d(8, 8, (3, 3), (2, 2), (1, 1), (1, 1), kernel_num=2)
    x = torch.randn(2, 8, 9, 9)
    torch.testing.assert_close(a.eval()(x), b.eval()(x))
    same = ODConv2d(8, 8, 3, padding="same", kernel_num=1).eval()
    assert same(x).shape == x.shape


def test_extra_repr_shows_only_what_is_special():
    r = repr(ODConv2d(8, 16, 3, padding=1, groups=2, kernel_num=4))
    assert "groups=2" in r and "kernel_num=4" in r and "dilation" not in r and "reduction" not in r


def test_temperature_sharpens_attentions_and_is_set_model_wide():
    layer = _layer(SHAPES["3x3"]).eval()
    x = torch.randn(2, 16, 9, 9)
    layer.update_temperature(1.0)
    sharp = layer.attention(x).kernel
    layer.update_temperature(30.0)
    flat = layer.attention(x).kernel
    assert layer.temperature == 30.0
    assert flat.max() - flat.min() < sharp.max() - sharp.min()  # high temperature: near-uniform softmax
    model = models.od_resnet18(kernel_num=2)
    assert odconv.set_temperature(model, 7.5) == 16
    assert all(m.temperature == 7.5 for m in model.modules() if isinstance(m, ODConv2d))


def test_reciprocal_temperature_schedule_is_linear_in_the_logits_scale():
    n = 10
    t = [odconv.temperature_schedule(i, n, 30.0, 4, shape="reciprocal") for i in range(60)]
    assert t[0] == pytest.approx(30.0) and t[40] == pytest.approx(1.0) and t[59] == 1.0
    inverse = [1 / v for v in t[:41]]
    steps = [b - a for a, b in zip(inverse, inverse[1:])]
    assert steps == pytest.approx([(1 - 1 / 30) / 40] * 40)  # 1/T rises by the same amount every step
    # The released linear ramp moves 1/T from 0.25 to 1 in its last tenth; this one a tenth of the way.
    assert 1 / odconv.temperature_schedule(36, n, 30.0, 4) < 0.3
    assert 1 / t[36] == pytest.approx(1 / 30 + 0.9 * (1 - 1 / 30))
    assert odconv.temperature_schedule(20, n, 30.0, 4, t_end=2.0, shape="reciprocal") == pytest.approx(
        1 / (0.5 * (1 / 2) + 0.5 * (1 / 30)))
    with pytest.raises(ValueError, match="temperature shape must be one of"):
        odconv.temperature_schedule(1, n, shape="cosine")
    with pytest.raises(ValueError, match="t_end > 0"):
        odconv.temperature_schedule(1, n, 1.0, 4, t_end=0.0, shape="reciprocal")


def test_released_temperature_schedule():
    n = 100  # iterations per epoch
    assert odconv.temperature_schedule(0, n) == pytest.approx(30.0)
    assert odconv.temperature_schedule(1, n) == pytest.approx(1 + 29 * (1000 - 1) / 1000)
    assert odconv.temperature_schedule(500, n) == pytest.approx(15.5)
    assert odconv.temperature_schedule(1000, n) == 1.0
    assert odconv.temperature_schedule(5000, n) == 1.0
    values = [odconv.temperature_schedule(i, n) for i in range(1200)]
    assert all(a >= b for a, b in zip(values, values[1:]))  # never increases
    with pytest.raises(ValueError, match="iters_per_epoch"):
        odconv.temperature_schedule(1, 0)


def test_convert_torchvision_resnet50_matches_zoo_parameter_count():
    tv = odconv.convert(torchvision.models.resnet50())
    zoo = models.od_resnet50(kernel_num=1)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(tv) == count(zoo) == 28_635_112
    assert isinstance(tv.conv1, nn.Conv2d) and not isinstance(tv.conv1, ODConv2d)
    assert not isinstance(tv.layer1[0].downsample[0], ODConv2d)
    assert isinstance(tv.layer3[2].conv2, ODConv2d)
    tv4 = odconv.convert(torchvision.models.resnet50(), kernel_num=4)
    assert count(tv4) == count(models.od_resnet50(kernel_num=4))


def test_convert_torchvision_mobilenetv2_matches_zoo_and_runs():
    tv = odconv.convert(torchvision.models.mobilenet_v2(), kernel_num=4)
    assert sum(p.numel() for p in tv.parameters()) == 11_512_149
    assert tv.eval()(torch.randn(1, 3, 64, 64)).shape == (1, 1000)


def test_convert_excludes_by_pattern_and_starts_from_existing_weights():
    net = torchvision.models.resnet18().eval()
    ref = copy.deepcopy(net)
    odconv.convert(net, kernel_num=2, exclude=["layer4.*"], init_from_weight=True)
    assert not any(isinstance(m, ODConv2d) for m in net.layer4.modules())
    od = net.layer2[0].conv1
    assert isinstance(od, ODConv2d)
    for i in range(2):
        torch.testing.assert_close(od.weight[i], ref.layer2[0].conv1.weight)
    assert not od.training
    assert net(torch.randn(2, 3, 64, 64)).shape == (2, 1000)


def test_convert_passes_the_ablation_switches_to_every_layer():
    net = odconv.convert(torchvision.models.resnet18(), attentions=["spatial", "kernel"], kernel_num=2,
                         attention_norm="layer")
    layers = [m for m in net.modules() if isinstance(m, ODConv2d)]
    assert len(layers) == 16
    assert all(m.attentions == ("spatial", "kernel") and m.attention.norm is not None for m in layers)
    assert net.train()(torch.randn(1, 3, 64, 64)).shape == (1, 1000)  # batch-independent norm: trains on one


def test_convert_keeps_a_users_bias_and_trains():
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1, bias=True))
    odconv.convert(net, kernel_num=2, init_from_weight=True)
    assert isinstance(net[2], ODConv2d) and net[2].bias is not None and not isinstance(net[0], ODConv2d)
    out = net(torch.randn(4, 3, 8, 8))
    out.sum().backward()
    assert net[2].weight.grad is not None and net[2].attention.fc.weight.grad is not None


def test_training_step_changes_attention_parameters():
    layer = _layer(SHAPES["3x3"])
    opt = torch.optim.SGD(layer.parameters(), lr=0.1)
    before = {n: p.detach().clone() for n, p in layer.named_parameters()}
    F.mse_loss(layer(torch.randn(4, 16, 9, 9)), torch.randn(4, 24, 9, 9)).backward()
    opt.step()
    for n, p in layer.named_parameters():
        assert not torch.equal(before[n], p.detach()), f"{n} did not move"
