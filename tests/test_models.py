"""The zoo: exact parameter counts, timm registration, the dynamic-conv families and their stages, forward/backward and
stage outputs, checkpoint loading."""
from __future__ import annotations

import functools
import re

import pytest
import timm
import torch
from torch import nn

import models
from models import CheckpointMismatchError, count_params, load_checkpoint
from models.published import PAPER_ROWS, paper_row
from odconv import CondConv2d, DyConv2d, DynamicConv2d, ODConv2d

# Released parameter counts (1000 classes, reduction 1/16): the released code's models, counted by it.
OD_PARAMS = {
    ("od_resnet18", 1): 11_943_944, ("od_resnet18", 4): 44_901_640,
    ("od_resnet34", 1): 22_290_168, ("od_resnet34", 4): 85_551_288,
    ("od_resnet50", 1): 28_635_112, ("od_resnet50", 4): 90_670_888,
    ("od_resnet101", 1): 50_818_769, ("od_resnet101", 2): 90_441_623,
    ("od_mobilenetv2_100", 1): 4_940_185, ("od_mobilenetv2_100", 4): 11_512_149,
    ("od_mobilenetv2_075", 1): 3_507_113, ("od_mobilenetv2_075", 4): 7_496_013,
    ("od_mobilenetv2_050", 1): 2_425_537, ("od_mobilenetv2_050", 4): 4_435_501,
}
# torchvision's resnet18/50/101 and mobilenet_v2(width_mult=1.0/0.75/0.5) counts.
STATIC_PARAMS = {
    "static_resnet18": 11_689_512, "static_resnet50": 25_557_032, "static_resnet101": 44_549_160,
    "static_mobilenetv2_100": 3_504_872, "static_mobilenetv2_075": 2_636_424, "static_mobilenetv2_050": 1_968_680,
}
FAMILIES = ("od_", "condconv_", "dyconv_", "static_")
ARCHS = ("resnet18", "resnet34", "resnet50", "resnet101", "mobilenetv2_050", "mobilenetv2_075", "mobilenetv2_100")


def _meta(name: str, **kwargs) -> nn.Module:
    """The model on the meta device (shapes only), built once per test session: tests only read it."""
    return _meta_cached(name, tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in kwargs.items())))


@functools.lru_cache(maxsize=None)
def _meta_cached(name: str, kwargs: tuple) -> nn.Module:
    return timm.create_model(name, device="meta", **dict(kwargs))


@pytest.mark.parametrize("name, kernel_num", list(OD_PARAMS), ids=[f"{n}-{k}x" for n, k in OD_PARAMS])
def test_odconv_parameter_counts_equal_the_released_models(name, kernel_num):
    assert count_params(_meta(name, kernel_num=kernel_num)) == OD_PARAMS[name, kernel_num]


@pytest.mark.parametrize("name", list(STATIC_PARAMS))
def test_static_parameter_counts_equal_torchvision(name):
    assert count_params(_meta(name)) == STATIC_PARAMS[name]


def _dynamic_sites(static: nn.Module) -> list[nn.Conv2d]:
    """The convs a dynamic twin replaces, read off the static twin: every conv but the stem and the 1x1 shortcuts."""
    return [m for n, m in static.named_modules()
            if isinstance(m, nn.Conv2d) and n not in ("conv1", "features.0.0") and "downsample" not in n]


def _condconv_extra(conv: nn.Conv2d, experts: int) -> int:
    # experts - 1 more kernels, and the routing FC: C_in x E weights + E biases (CondConv, Eq. 2).
    return (experts - 1) * conv.weight.numel() + conv.in_channels * experts + experts


def _dyconv_extra(conv: nn.Conv2d, k: int, reduction: int) -> int:
    # k - 1 more kernels; attention FC(C_in -> C_in/r, no bias) -> ReLU -> FC(-> K, with bias) (DyConv, Sec. 3.2).
    hidden = max(conv.in_channels // reduction, 1)
    return (k - 1) * conv.weight.numel() + conv.in_channels * hidden + hidden * k + k


@pytest.mark.parametrize("arch", ["resnet18", "resnet50", "mobilenetv2_100"])
def test_condconv_and_dyconv_counts_follow_from_the_static_twin(arch):
    static = _meta(f"static_{arch}")
    sites = _dynamic_sites(static)
    base = count_params(static)
    assert count_params(_meta(f"condconv_{arch}")) == base + sum(_condconv_extra(c, 8) for c in sites)
    assert count_params(_meta(f"condconv_{arch}", num_experts=3)) == base + sum(_condconv_extra(c, 3) for c in sites)
    assert count_params(_meta(f"dyconv_{arch}")) == base + sum(_dyconv_extra(c, 4, 4) for c in sites)
    assert count_params(_meta(f"dyconv_{arch}", kernel_num=2, reduction=8)) == base + sum(
        _dyconv_extra(c, 2, 8) for c in sites)


def test_paper_comparison_rows_by_hand():
    # ResNet18 block convs: 4 of 64x64x3x3 in layer1, then per stage c in (128, 256, 512): one c x c/2 x 3x3 and
    # three c x c x 3x3. Written out here, not read off a model.
    convs = [(64, 64)] * 4 + [(c // 2, c) for c in (128, 256, 512)] + [(c, c) for c in (128, 256, 512) for _ in range(3)]
    weights = sum(9 * i * o for i, o in convs)
    assert weights == 10_985_472
    condconv = 11_689_512 + sum(7 * 9 * i * o + 8 * i + 8 for i, o in convs)
    dyconv = 11_689_512 + sum(3 * 9 * i * o + i * (i // 4) + (i // 4) * 4 + 4 for i, o in convs)
    assert count_params(_meta("condconv_resnet18")) == condconv == 88_615_080
    assert count_params(_meta("dyconv_resnet18")) == dyconv == 44_933_032
    # How the paper's CondConv and DyConv rows (81.35M, 45.47M) follow from these: test_complexity.py.


@pytest.mark.slow
def test_published_rows_match_our_models():
    """Every published row names a zoo model whose exact count rounds to the published figure: a typo in the
    table or a change in the architecture fails here."""
    for (arch, k), row in PAPER_ROWS.items():
        name = f"od_{arch}" if k else f"static_{arch}"
        assert name in models.MODEL_NAMES
        assert paper_row(name, k) is row
        model = _meta(name, **({"kernel_num": k} if k else {}))
        assert round(count_params(model) / 1e6, 2) == row.params, row.label
    assert paper_row("od_resnet34", 1) is None  # not in the paper's tables


def test_registration_is_explicit_and_keeps_timms_own_models():
    assert timm.create_model("resnet50").__class__.__module__.startswith("timm.")
    assert timm.create_model("mobilenetv2_100").__class__.__module__.startswith("timm.")
    expected = {f + a for f in FAMILIES for a in ARCHS}
    assert set(models.MODEL_NAMES) == expected and len(expected) == 28
    assert expected <= set(timm.list_models())
    for name in expected:  # one function per model, named after it, as timm writes them
        fn = timm.models.model_entrypoint(name)
        assert fn.__name__ == name and fn.__module__ == "models.registry" and fn is getattr(models, name)


def _kernels(name: str) -> dict:
    if name.startswith("od_") or name.startswith("dyconv_"):
        return dict(kernel_num=2)
    return dict(num_experts=2) if name.startswith("condconv_") else {}


@pytest.mark.parametrize("name", models.MODEL_NAMES)
def test_forward_backward_and_stage_outputs(name):
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=10, **_kernels(name))
    x = torch.randn(2, 3, 32, 32, requires_grad=True)
    out = model(x)
    assert out.shape == (2, 10)
    out.sum().backward()
    assert x.grad is not None
    for n, p in model.named_parameters():
        assert p.grad is not None, f"No gradient for {n}"
    model.eval()
    stages = model.forward_stages(x.detach())
    assert [s.shape[1] for s in stages] == [f["num_chs"] for f in model.feature_info]
    assert [32 // s.shape[-1] for s in stages] == [f["reduction"] for f in model.feature_info]
    torch.testing.assert_close(model.forward_head(stages[-1]), model(x.detach()))


def test_each_family_injects_its_layer_where_odconv_goes():
    for prefix, cls in (("od_", ODConv2d), ("condconv_", CondConv2d), ("dyconv_", DyConv2d)):
        r = _meta(prefix + "resnet50")
        assert type(r.conv1) is nn.Conv2d and type(r.layer1[0].downsample[0]) is nn.Conv2d and type(r.fc) is nn.Linear
        assert sum(type(m) is cls for m in r.modules()) == 16 * 3
        m = _meta(prefix + "mobilenetv2_100")
        assert type(m.features[0][0]) is nn.Conv2d
        assert type(m.features[18][0]) is cls and m.features[18][0].out_channels == 1280
        assert type(m.features[3].conv[1][0]) is cls and m.features[3].conv[1][0].groups == 144
    assert _meta("condconv_resnet18").layer1[0].conv1.num_experts == 8
    assert _meta("dyconv_resnet18").layer1[0].conv1.kernel_num == 4
    assert _meta("od_resnet18").layer1[0].conv1.kernel_num == 1


def test_odconv_ablation_arguments_reach_every_layer():
    kwargs = dict(kernel_num=2, reduction=0.125, min_channel=8, attentions=("channel", "filter", "kernel"),
                  spatial_act="softmax", attention_norm="layer")
    for name in ("od_resnet18", "od_mobilenetv2_050"):
        layers = [m for m in _meta(name, **kwargs).modules() if isinstance(m, ODConv2d)]
        assert layers and all(
            (m.kernel_num, m.reduction, m.min_channel, tuple(m.attentions), m.spatial_act, m.attention_norm)
            == (2, 0.125, 8, ("channel", "filter", "kernel"), "softmax", "layer") for m in layers)
    model = timm.create_model("od_resnet18", num_classes=3, attention_norm="layer", dynamic_stages=[4]).train()
    model(torch.randn(1, 3, 64, 64)).sum().backward()  # one sample trains with a batch-independent norm


def _block_strides(model: nn.Module, size: int = 64) -> tuple[set[int], set[int]]:
    """Output strides of the blocks whose convs are all dynamic, and of those whose convs are all static."""
    blocks = list(model.features)[1:] if hasattr(model, "features") else [
        b for i in range(1, 5) for b in getattr(model, f"layer{i}")]
    dynamic, static = set(), set()

    hooks = []
    for block in blocks:
        # The block's own convs: not the static 1x1 shortcut, not the convs inside an ODConv attention branch.
        convs = [m for n, m in block.named_modules() if isinstance(m, DynamicConv2d) or (
            isinstance(m, nn.Conv2d) and "downsample" not in n and "attention" not in n)]
        kinds = {isinstance(m, DynamicConv2d) for m in convs}
        assert len(kinds) == 1, "a block mixes static and dynamic convs"
        target = dynamic if kinds.pop() else static
        hooks.append(block.register_forward_hook(lambda mod, i, o, t=target: t.add(size // o.shape[-1])))
    model.eval()(torch.randn(1, 3, size, size))
    for h in hooks:
        h.remove()
    return dynamic, static


@pytest.mark.parametrize("arch", ["resnet18", "mobilenetv2_050"])
def test_dynamic_stages_are_the_output_strides(arch):
    # Stage s = blocks with output stride 2**(s+1); MobileNetV2's stride-2 t=1 block belongs to stage 1.
    stage_strides = {1: {2, 4}, 2: {8}, 3: {16}, 4: {32}}
    for stages in ([1, 2, 3, 4], [3, 4], [1], [2, 4]):
        dynamic, static = _block_strides(timm.create_model(f"dyconv_{arch}", dynamic_stages=stages))
        expected = set().union(*(stage_strides[s] for s in stages))
        if arch.startswith("resnet"):
            expected.discard(2)
        assert dynamic == expected and not dynamic & static, stages
    full, late = (count_params(_meta(f"od_{arch}", dynamic_stages=s)) for s in ([1, 2, 3, 4], [3, 4]))
    assert count_params(_meta(f"static_{arch}")) < late < full


def test_dynamic_stages_of_mobilenetv2_by_module():
    m = timm.create_model("od_mobilenetv2_100", dynamic_stages=[4])
    assert type(m.features[13].conv[0][0]) is nn.Conv2d and type(m.features[14].conv[0][0]) is ODConv2d
    assert type(m.features[18][0]) is ODConv2d  # the final 1x1 conv runs at stride 32: stage 4
    m = timm.create_model("od_mobilenetv2_100", dynamic_stages=[1])
    assert type(m.features[1].conv[0][0]) is ODConv2d and type(m.features[4].conv[0][0]) is nn.Conv2d


def test_dropout_default_is_decided_by_the_builder():
    def p(model):
        return model.dropout.p if hasattr(model, "dropout") else model.classifier[0].p

    assert p(_meta("od_resnet18")) == 0.1 and p(_meta("od_mobilenetv2_100")) == 0.1
    assert p(_meta("od_resnet18", kernel_num=4)) == 0.2 and p(_meta("od_mobilenetv2_100", kernel_num=4)) == 0.2
    assert p(_meta("condconv_resnet18")) == 0.2 and p(_meta("dyconv_mobilenetv2_050")) == 0.2
    assert p(_meta("condconv_resnet18", num_experts=2)) == 0.1
    assert p(_meta("static_resnet50")) == 0.1 and p(_meta("static_mobilenetv2_100")) == 0.1
    assert p(_meta("od_resnet18", dropout=0.0)) == 0.0 and p(_meta("static_resnet18", drop_rate=0.3)) == 0.3
    with pytest.raises(TypeError, match="dropout"):
        models.ResNet(18)  # the class has no default of its own


def test_device_and_dtype_kwargs_reach_every_tensor():
    for name in ("od_resnet18", "condconv_mobilenetv2_050", "dyconv_resnet18", "static_mobilenetv2_050"):
        model = timm.create_model(name, device="meta", dtype=torch.float64)
        tensors = list(model.parameters()) + [b for b in model.buffers() if b.is_floating_point()]
        assert all(t.device.type == "meta" and t.dtype == torch.float64 for t in tensors), name
    model = timm.create_model("dyconv_resnet18", dtype=torch.float64, num_classes=3).eval()
    assert model(torch.randn(1, 3, 32, 32, dtype=torch.float64)).dtype == torch.float64


def test_timm_kwargs_and_pretrained_cfg():
    model = timm.create_model("od_resnet50", kernel_num=4, num_classes=10, drop_rate=0.2)
    assert model.fc.out_features == 10 and model.dropout.p == 0.2
    assert model.layer2[0].conv2.kernel_num == 4
    cfg = model.pretrained_cfg
    assert cfg["crop_pct"] == 0.875 and cfg["input_size"] == (3, 224, 224)
    assert cfg["mean"] == timm.data.IMAGENET_DEFAULT_MEAN and cfg["std"] == timm.data.IMAGENET_DEFAULT_STD
    data_cfg = timm.data.resolve_data_config({}, model=model)
    assert data_cfg["crop_pct"] == 0.875
    model.reset_classifier(5)
    assert model.eval()(torch.randn(1, 3, 32, 32)).shape == (1, 5)
    model.reset_classifier(0, "")  # timm's way to get the unpooled features
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 2048, 2, 2)
    pooled = timm.create_model("static_mobilenetv2_050", num_classes=0).eval()
    assert pooled(torch.randn(1, 3, 64, 64)).shape == (1, pooled.head_hidden_size)


def test_bad_builder_arguments_get_one_clear_error():
    with pytest.raises(ValueError, match="load_checkpoint"):
        timm.create_model("od_resnet50", pretrained=True)
    with pytest.raises(ValueError, match="static model and takes no kernel_num; use od_resnet50"):
        timm.create_model("static_resnet50", kernel_num=4)
    with pytest.raises(ValueError, match="static model and takes no dynamic_stages"):
        timm.create_model("static_resnet50", dynamic_stages=[4])
    with pytest.raises(ValueError, match="od_resnet18 takes no num_experts; its layer arguments are"):
        timm.create_model("od_resnet18", num_experts=4)
    with pytest.raises(ValueError, match="condconv_mobilenetv2_050 takes no kernel_num"):
        timm.create_model("condconv_mobilenetv2_050", kernel_num=4)
    with pytest.raises(ValueError, match="either dropout or drop_rate"):
        timm.create_model("od_resnet18", dropout=0.1, drop_rate=0.2)
    for bad in ([0], [], [2, 2], "34", [5]):
        with pytest.raises(ValueError, match="dynamic_stages must be"):
            timm.create_model("dyconv_resnet18", dynamic_stages=bad)


def _trained_looking(name: str) -> nn.Module:
    """A model whose every tensor, BatchNorm statistics included, differs from a fresh model's: a loader that skips
    or mangles any key leaves a difference behind."""
    torch.manual_seed(0)
    model = timm.create_model(name, kernel_num=2, num_classes=7).eval()
    with torch.no_grad():
        for k, t in model.state_dict().items():
            if "running_var" in k:
                t.copy_(torch.rand_like(t) + 0.5)
            elif t.is_floating_point():
                t.copy_(torch.randn_like(t) * 0.05)  # small: activations stay finite and fast
            else:  # BatchNorm's num_batches_tracked
                t.fill_(7)
    return model


CHECKPOINT_FORMATS = {
    "plain": lambda state: state,
    "training": lambda state: {"model": state, "epoch": 3, "step": 10, "optimizer": {}},  # train/loop.py's last.pt
    # The released training script's: DataParallel's "module." prefix, inside "state_dict".
    "released": lambda state: {"epoch": 100, "arch": "od_resnet18", "best_acc": 73.0,
                               "state_dict": {"module." + k: v for k, v in state.items()}},
}


@pytest.mark.parametrize("fmt, name", [("plain", "od_mobilenetv2_050"), ("training", "od_mobilenetv2_050"),
                                       ("released", "od_resnet18")])
def test_each_checkpoint_format_loads_every_tensor_into_a_fresh_model(fmt, name, tmp_path):
    src = _trained_looking(name)
    torch.manual_seed(1)
    dst = timm.create_model(name, kernel_num=2, num_classes=7).eval()
    before, expected = dst.state_dict(), src.state_dict()
    assert before.keys() == expected.keys()
    assert not any(torch.equal(before[k], v) for k, v in expected.items())  # nothing is right by chance
    torch.save(CHECKPOINT_FORMATS[fmt](expected), tmp_path / "ck.pt")
    assert load_checkpoint(dst, tmp_path / "ck.pt") == ([], [])
    loaded = dst.state_dict()
    for k, v in expected.items():
        assert torch.equal(loaded[k], v), k
    x = torch.randn(1, 3, 16, 16)
    torch.testing.assert_close(dst(x), src(x), rtol=0, atol=0)


def test_checkpoint_mismatch_lists_missing_and_unexpected_keys(tmp_path):
    src = models.od_resnet18(kernel_num=1)
    state = src.state_dict()
    state.pop("layer1.0.conv1.attention.fc.weight")
    state["layer9.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "bad.pt")
    with pytest.raises(CheckpointMismatchError) as e:
        load_checkpoint(models.od_resnet18(kernel_num=1), tmp_path / "bad.pt")
    msg = str(e.value)
    assert "missing keys (1): layer1.0.conv1.attention.fc.weight" in msg and "unexpected keys (1): layer9.weight" in msg
    torch.save(models.od_resnet18(kernel_num=4).state_dict(), tmp_path / "k4.pt")
    with pytest.raises(CheckpointMismatchError) as e:
        load_checkpoint(models.od_resnet18(kernel_num=1), tmp_path / "k4.pt")
    # kernel_num=1 has no kernel attention (32 fewer tensors) and one kernel per conv instead of 4.
    unexpected, mis_shaped = str(e.value).split(" | ")
    assert re.fullmatch(re.escape(f"{tmp_path / 'k4.pt'} does not fit ResNet: unexpected keys (32): ")
                        + r"layer1\.0\.conv1\.attention\.kernel_fc\.weight, [^|]* \.\.\.", unexpected), unexpected
    assert re.fullmatch(r"shape mismatches \(16\): layer1\.0\.conv1\.weight \(4, 64, 64, 3, 3\) vs model "
                        r"\(1, 64, 64, 3, 3\); .*layer3\.0\.conv2\.weight \(4, 256, 256, 3, 3\) vs model "
                        r"\(1, 256, 256, 3, 3\)", mis_shaped), mis_shaped  # the first 10 of 16 are listed


def test_checkpoint_bad_files_get_one_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoint file not found: .*nope.pt"):
        load_checkpoint(models.static_resnet18(), tmp_path / "nope.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointMismatchError, match=r"junk.pt is not a readable PyTorch checkpoint \(not written"):
        load_checkpoint(models.static_resnet18(), tmp_path / "junk.pt")
