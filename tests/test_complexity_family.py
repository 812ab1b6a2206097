"""MAC counting for every member of the family, each against a hand count on a small layer: ODConv, CondConv and
DyConv in 1-D and 3-D (and static Conv1d/Conv3d around them), KernelWarehouse's non-local basis, FDConv (kernel
made by an inverse FFT, kernel modulation, frequency band modulation of the input); and the published ResNet50
overheads (FDConv paper, Table 1) against our counts, or rebuilt from them by arithmetic where the paper placed the
member elsewhere."""
from __future__ import annotations

import math

import pytest
import timm
import torch
from torch import nn

import models  # noqa: F401  (registers the zoo)
from models.complexity import (count_macs, count_params, dynamic_conv_macs, fdconv_macs, fft_macs, kw_conv_macs,
                               on_meta, unit_output)
from models.published import FAMILY_COCO_ROWS
from odconv import (CondConv3d, DyConv1d, FDConv2d, ODConv1d, ODConv3d, WarehouseManager, build_warehouses,
                    convert_to_fdconv)


def test_fft_macs_is_n_log2_n():
    assert fft_macs(16, 16) == 256 * 8
    assert fft_macs(32, 32) == 1024 * 10
    assert fft_macs(1, 1) == 0


def test_odconv1d_macs_by_hand():
    """k=5, stride 2 over 20 positions: 10 outputs; hidden 16; heads channel 8, filter 12, spatial 5, kernel 3."""
    layer = ODConv1d(8, 12, 5, stride=2, padding=2, kernel_num=3).eval()
    x = torch.zeros(1, 8, 20)
    m = dynamic_conv_macs(layer, x, layer(x))
    weights = 12 * 8 * 5
    assert m == dict(conv=weights * 10, attention=8 * 20 + 8 * 16 + 16 * (8 + 12 + 5 + 3),
                     aggregation=3 * weights + weights, products=8 * 20 + 12 * 10)


def test_odconv3d_condconv3d_dyconv1d_macs_by_hand():
    x = torch.zeros(1, 4, 4, 6, 6)  # 144 positions; stride (1, 2, 2) -> 4 x 3 x 3 = 36
    od = ODConv3d(4, 8, 3, stride=(1, 2, 2), padding=1, kernel_num=2).eval()
    weights = 8 * 4 * 27
    assert dynamic_conv_macs(od, x, od(x)) == dict(
        conv=weights * 36, attention=4 * 144 + 4 * 16 + 16 * (4 + 8 + 27 + 2), aggregation=2 * weights + weights,
        products=4 * 144 + 8 * 36)
    cond = CondConv3d(4, 8, 3, padding=1, num_experts=4).eval()
    assert dynamic_conv_macs(cond, x, cond(x)) == dict(
        conv=weights * 144, attention=4 * 144 + 4 * 4, aggregation=4 * weights, products=0)
    dy = DyConv1d(8, 12, 3, padding=1, kernel_num=4).eval()  # reduction 4: hidden 2
    v = torch.zeros(1, 8, 20)
    assert dynamic_conv_macs(dy, v, dy(v)) == dict(
        conv=12 * 8 * 3 * 20, attention=8 * 20 + 8 * 2 + 2 * 4, aggregation=4 * 12 * 8 * 3, products=0)


@pytest.mark.parametrize("dims", [1, 3])
def test_count_macs_counts_1d_and_3d_networks(dims):
    """A static conv, a dynamic one and a classifier in 1-D or 3-D: the network's count is the sum of the parts."""
    conv, odconv = (nn.Conv1d, ODConv1d) if dims == 1 else (nn.Conv3d, ODConv3d)
    size = (16,) if dims == 1 else (4, 4, 4)
    net = nn.Sequential(conv(3, 8, 3, padding=1), odconv(8, 8, 3, padding=1, kernel_num=2),
                        nn.Flatten(), nn.Linear(8 * math.prod(size), 10))
    total = count_macs(net, (3, *size))
    positions = math.prod(size)
    x = torch.zeros(1, 8, *size)
    dynamic = dynamic_conv_macs(net[1].eval(), x, net[1](x))
    assert total["conv"] == 8 * 3 * 3**dims * positions + dynamic["conv"]
    assert total["linear"] == 8 * positions * 10
    assert total["attention"] == dynamic["attention"] and total["aggregation"] == dynamic["aggregation"]
    assert total["total"] == sum(v for k, v in total.items() if k != "total")


def test_kernelwarehouse_nonlocal_basis_runs_once_per_mixture():
    """ResNet50 1/2x's option: fc3 maps each mixture's basis logits to the non-local cells. Two 3x3 layers 8->16 and
    16->8 share a warehouse of 8x8 cells: 18 mixtures each, n = 36 / 2 = 18 cells, 9 local and 9 non-local per
    layer, a basis of max(int(9 / 16), 16) = 16; fc2 emits (9 + 16 + 1) logits per mixture."""
    manager = WarehouseManager(cell_num_ratio=0.5, nonlocal_basis_ratio=0.0625)
    net = nn.ModuleList([manager.reserve(8, 16, 3, padding=1, bias=False, warehouse_name="w"),
                         manager.reserve(16, 8, 3, padding=1, bias=False, warehouse_name="w")])
    build_warehouses(net, manager)
    layer = net[0].eval()
    assert (layer.attention.num_cells, layer.attention.num_basis) == (18, 16)
    x = torch.zeros(1, 8, 6, 6)
    m = kw_conv_macs(layer, x, layer(x))
    assert m == {"conv": 16 * 8 * 9 * 36, "attention": 8 * 36 + 8 * 16 + 16 * 26 * 18 + 18 * 16 * 9,
                 "aggregation": 18 * 16 * 8 * 9, "products": 0}


def _fdconv(*args, **kwargs) -> FDConv2d:
    torch.manual_seed(0)
    return FDConv2d(*args, bias=False, **kwargs).eval()


def test_fdconv_3x3_macs_by_hand():
    """32 -> 32, 3x3 on 16x16, 4 bands: hidden 16; the local 1-D conv (3 taps, 288 outputs) slides along the 32
    channels; the kernel is the inverse FFT of a 96 x 96 spectrum (49 complex columns, one real band gate per real
    and imaginary part); spatial, local, channel and filter gates go on the kernel (9,216 weights < 64 x 256 map
    elements); the input passes the band modulation: its FFT, 3 bands of an inverse FFT, a 3x3 gate conv (32 -> 1)
    and a product each."""
    layer = _fdconv(32, 32, 3, padding=1, kernel_num=4)
    x = torch.zeros(1, 32, 16, 16)
    weights = 32 * 32 * 9
    assert fdconv_macs(layer, x, layer(x)) == {
        "conv": weights * 256,
        "attention": 32 * 256 + 32 * 16 + 16 * (32 + 32 + 9 + 4) + 32 * (32 * 9 * 3),
        "aggregation": round(9216 * math.log2(9216)) + 96 * 49 * 2 + 4 * weights,
        "products": 0,
        "frequency": 32 * 256 * 8 + 3 * (32 * 256 * 8 + 32 * 9 * 256 + 32 * 256),
    }


def test_fdconv_1x1_gates_on_features_and_one_band():
    """32 -> 32, 1x1 on 4x4: the 1,024 weights are not fewer than the 64 x 16 map elements, so the channel and
    filter gates multiply the features; no spatial head, no band modulation. One band: no band gate."""
    layer = _fdconv(32, 32, 1, kernel_num=1)
    x = torch.zeros(1, 32, 4, 4)
    assert fdconv_macs(layer, x, layer(x)) == {
        "conv": 1024 * 16, "attention": 32 * 16 + 32 * 16 + 16 * (32 + 32) + 32 * (32 * 3),
        "aggregation": 1024 * 10 + 1024, "products": 32 * 16 + 32 * 16, "frequency": 0}
    static = _fdconv(16, 32, 3, padding=1)  # below the gate (min channels 16): a plain conv
    y = static(torch.zeros(1, 16, 4, 4))
    assert fdconv_macs(static, torch.zeros(1, 16, 4, 4), y) == {"conv": 32 * 16 * 9 * 16}


def test_count_macs_of_a_converted_network():
    """A converted ResNet18 counts its FDConv layers whole (and the static stem, shortcuts and classifier)."""
    with on_meta():
        net = convert_to_fdconv(timm.create_model("static_resnet18"), kernel_num=64)
    fd = [m for m in net.modules() if isinstance(m, FDConv2d)]
    assert len(fd) == 16 and all(m.is_dynamic for m in fd)
    with on_meta():
        static = timm.create_model("static_resnet18")
    ours, static = count_macs(net, (3, 64, 64)), count_macs(static, (3, 64, 64))
    assert ours["conv"] == static["conv"] and ours["linear"] == static["linear"]
    assert min(ours["attention"], ours["aggregation"], ours["frequency"]) > 0


def _over_static(name: str, **kwargs) -> int:
    """Backbone parameters (no classifier) over the static ResNet50's, built on the meta device."""
    with on_meta():
        if name == "fd_resnet50":
            model = convert_to_fdconv(timm.create_model("static_resnet50", num_classes=0), kernel_num=64)
        else:
            model = timm.create_model(name, num_classes=0, **kwargs)
        static = timm.create_model("static_resnet50", num_classes=0)
    return count_params(model) - count_params(static)


@pytest.mark.parametrize("name, kwargs, key", [
    ("od_resnet50", {"kernel_num": 4}, ("od_", 4)),
    ("kw_resnet50", {"kw_ratio": 1}, ("kw_", 1)),
    ("kw_resnet50", {"kw_ratio": 4}, ("kw_", 4)),
    ("fd_resnet50", {}, ("fd_", 64)),
])
def test_resnet50_overheads_equal_the_published_ones(name, kwargs, key):
    """FDConv paper, Table 1: the ResNet50 backbone overheads of ODConv 4x, KW 1x/4x and FDConv, to its digit."""
    assert round(_over_static(name, **kwargs) / 1e6, 1) == FAMILY_COCO_ROWS[key].params


def test_resnet50_dyconv_and_condconv_overheads_rebuilt_from_ours():
    """The Table's DyConv (+75.3M) and CondConv (+90.0M) put the member elsewhere than ODConv goes, as the ODConv
    paper's ResNet18 comparison rows do (tests/test_complexity.py): DyConv also in the four 1x1 shortcuts (3 more
    kernels and an attention C -> C/4 -> 4 each); CondConv only in the last three blocks (layer4)."""
    dy = _over_static("dyconv_resnet50", kernel_num=4)
    shortcuts = [(64, 256), (256, 512), (512, 1024), (1024, 2048)]
    dy += sum(3 * i * o + i * (i // 4) + (i // 4) * 4 + 4 for i, o in shortcuts)
    assert round(dy / 1e6, 1) == FAMILY_COCO_ROWS["dyconv_", 4].params == 75.3
    with on_meta():
        static = timm.create_model("static_resnet50", num_classes=0)
    layer4 = [m for n, m in static.named_modules() if n.startswith("layer4.") and "downsample" not in n
              and isinstance(m, nn.Conv2d)]
    kernels = sum(7 * m.weight.numel() for m in layer4)
    routing = sum(m.in_channels * 8 + 8 for m in layer4)
    assert (kernels, routing) == (89_915_392, 65_608)
    assert round((kernels + routing) / 1e6, 1) == FAMILY_COCO_ROWS["condconv_", 8].params == 90.0
    assert "89,915,392" in FAMILY_COCO_ROWS["condconv_", 8].note and "65,608" in FAMILY_COCO_ROWS["condconv_", 8].note


def test_a_layer_built_on_meta_leaves_the_cpu_layers_intact():
    """The spectrum's band indices are cached per shape: one built under the meta device must not leave meta
    indices for the next real layer of that shape."""
    with on_meta():
        meta = FDConv2d(32, 32, 3, padding=1, kernel_num=4)
    assert meta.dft_weight.is_meta
    layer = _fdconv(32, 32, 3, padding=1, kernel_num=4)
    assert layer.band_of.device.type == "cpu" and layer.indices.device.type == "cpu"
    assert layer(torch.randn(1, 32, 8, 8)).shape == (1, 32, 8, 8)


@pytest.mark.parametrize("make, x", [
    (lambda: ODConv1d(8, 12, 5, stride=2, padding=2), torch.zeros(1, 8, 21)),
    (lambda: ODConv3d(4, 8, (3, 1, 3), stride=(2, 1, 1), padding=(1, 0, 2), dilation=(1, 1, 2)),
     torch.zeros(1, 4, 5, 3, 4)),
    (lambda: _fdconv(32, 32, 3, stride=2, padding=1, kernel_num=4), torch.zeros(1, 32, 9, 9)),
    (lambda: _fdconv(32, 32, 3, padding="same", kernel_num=4), torch.zeros(1, 32, 5, 7)),
])
def test_unit_output_shape_is_the_layers(make, x):
    """count_macs does not run the dynamic layers: the shape it gives them is the one they compute."""
    layer = make().eval()
    assert unit_output(layer, x).shape == layer(x).shape
