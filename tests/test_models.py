"""The zoo: exact parameter counts, timm registration, forward/backward and stage outputs, checkpoint loading."""
from __future__ import annotations

import pytest
import timm
import torch
from torch import nn

import models
from models import CheckpointMismatchError, load_checkpoint
from odconv import ODConv2d

# Released parameter counts (1000 classes, reduction 1/16).
OD_PARAMS = {
    ("od_resnet18", 1): 11_943_944, ("od_resnet18", 4): 44_901_640,
    ("od_resnet34", 1): 22_290_168, ("od_resnet34", 4): 85_551_288,
    ("od_resnet50", 1): 28_635_112, ("od_resnet50", 4): 90_670_888,
    ("od_resnet101", 1): 50_818_769, ("od_resnet101", 2): 90_441_623,
    ("od_mobilenetv2_100", 1): 4_940_185, ("od_mobilenetv2_100", 4): 11_512_149,
    ("od_mobilenetv2_075", 1): 3_507_113, ("od_mobilenetv2_075", 4): 7_496_013,
    ("od_mobilenetv2_050", 1): 2_425_537, ("od_mobilenetv2_050", 4): 4_435_501,
}
STATIC_PARAMS = {
    "static_resnet18": 11_689_512, "static_resnet50": 25_557_032, "static_resnet101": 44_549_160,
    "static_mobilenetv2_100": 3_504_872, "static_mobilenetv2_075": 2_636_424, "static_mobilenetv2_050": 1_968_680,
}


def _count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name, kernel_num", list(OD_PARAMS), ids=[f"{n}-{k}x" for n, k in OD_PARAMS])
def test_odconv_parameter_counts_equal_the_released_models(name, kernel_num):
    with torch.device("meta"):  # counting needs shapes only
        model = timm.create_model(name, kernel_num=kernel_num)
    assert _count(model) == OD_PARAMS[name, kernel_num]


@pytest.mark.parametrize("name", list(STATIC_PARAMS))
def test_static_parameter_counts_equal_torchvision(name):
    with torch.device("meta"):
        model = timm.create_model(name)
    assert _count(model) == STATIC_PARAMS[name]


def test_registration_keeps_timms_own_models():
    assert timm.create_model("resnet50").__class__.__module__.startswith("timm.")
    assert timm.create_model("mobilenetv2_100").__class__.__module__.startswith("timm.")
    assert set(models.MODEL_NAMES) <= set(timm.list_models("od_*") + timm.list_models("static_*"))
    assert len(models.MODEL_NAMES) == 14


@pytest.mark.parametrize("name", models.MODEL_NAMES)
def test_forward_backward_and_stage_outputs(name):
    kwargs = dict(kernel_num=2) if name.startswith("od_") else {}
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=10, **kwargs)
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


def test_stage_channels_feed_a_feature_pyramid():
    assert [f["num_chs"] for f in models.od_resnet50().feature_info] == [256, 512, 1024, 2048]
    assert [f["num_chs"] for f in models.od_mobilenetv2_100().feature_info] == [24, 32, 96, 1280]
    feats = timm.create_model("od_mobilenetv2_100", features_only=True, kernel_num=1).eval()
    assert [o.shape[1] for o in feats(torch.randn(1, 3, 64, 64))] == [24, 32, 96, 1280]


def test_architecture_is_the_released_one():
    r = models.od_resnet50(kernel_num=4)
    assert type(r.conv1) is nn.Conv2d and type(r.layer1[0].downsample[0]) is nn.Conv2d and type(r.fc) is nn.Linear
    assert all(isinstance(getattr(b, c), ODConv2d) for layer in (r.layer1, r.layer4) for b in layer for c in ("conv1", "conv2", "conv3"))
    assert sum(isinstance(m, ODConv2d) for m in r.modules()) == 16 * 3
    m = models.od_mobilenetv2_100()
    assert type(m.features[0][0]) is nn.Conv2d
    assert isinstance(m.features[18][0], ODConv2d) and m.features[18][0].out_channels == 1280
    assert isinstance(m.features[3].conv[1][0], ODConv2d) and m.features[3].conv[1][0].groups == 144
    assert m.classifier[0].p == 0.2 and r.dropout.p == 0.1


def test_timm_kwargs_and_pretrained_cfg():
    model = timm.create_model("od_resnet50", kernel_num=4, num_classes=10, drop_rate=0.2)
    assert model.fc.out_features == 10 and model.dropout.p == 0.2
    assert model.layer2[0].conv2.kernel_num == 4
    cfg = model.pretrained_cfg
    assert cfg["crop_pct"] == 0.875 and cfg["input_size"] == (3, 224, 224)
    assert cfg["mean"] == timm.data.IMAGENET_DEFAULT_MEAN and cfg["std"] == timm.data.IMAGENET_DEFAULT_STD
    data_cfg = timm.data.resolve_data_config({}, model=model)
    assert data_cfg["crop_pct"] == 0.875
    with pytest.raises(ValueError, match="load_checkpoint"):
        timm.create_model("od_resnet50", pretrained=True)
    with pytest.raises(ValueError, match="static model and takes no kernel_num"):
        timm.create_model("static_resnet50", kernel_num=4)
    with pytest.raises(ValueError, match="either dropout or drop_rate"):
        timm.create_model("od_resnet18", dropout=0.1, drop_rate=0.2)
    model.reset_classifier(5)
    assert model.eval()(torch.randn(1, 3, 32, 32)).shape == (1, 5)


def _pair(name="od_resnet18"):
    torch.manual_seed(0)
    src = timm.create_model(name, kernel_num=2, num_classes=7).eval()
    torch.manual_seed(1)
    dst = timm.create_model(name, kernel_num=2, num_classes=7).eval()
    return src, dst


def test_load_released_checkpoint_format(tmp_path):
    src, dst = _pair()
    released = {"epoch": 100, "arch": "od_resnet18", "best_acc": 73.0,
                "state_dict": {"module." + k: v for k, v in src.state_dict().items()}}
    torch.save(released, tmp_path / "released.pth.tar")
    assert load_checkpoint(dst, tmp_path / "released.pth.tar") == ([], [])
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(dst(x), src(x), rtol=0, atol=0)


def test_load_plain_and_training_checkpoint(tmp_path):
    src, dst = _pair("od_mobilenetv2_050")
    torch.save(src.state_dict(), tmp_path / "plain.pt")
    load_checkpoint(dst, tmp_path / "plain.pt")
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(dst(x), src(x), rtol=0, atol=0)
    torch.save({"model": src.state_dict(), "epoch": 3, "step": 10}, tmp_path / "train.pt")
    load_checkpoint(dst, tmp_path / "train.pt")


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
    with pytest.raises(CheckpointMismatchError, match=r"shape mismatches .*layer1.0.conv1.weight \(4, 64, 64, 1?3?"):
        load_checkpoint(models.od_resnet18(kernel_num=1), tmp_path / "k4.pt")


def test_checkpoint_bad_files_get_one_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoint file not found: .*nope.pt"):
        load_checkpoint(models.static_resnet18(), tmp_path / "nope.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointMismatchError, match=r"junk.pt is not a readable PyTorch checkpoint \(not written"):
        load_checkpoint(models.static_resnet18(), tmp_path / "junk.pt")


def test_published_rows_cover_every_table_entry():
    assert models.published.paper_row("od_resnet50", 4).top1 == 78.50
    assert models.published.paper_row("static_resnet50", 0).macs == 3858
    assert models.published.paper_row("od_resnet101", 2).params == 90.44
    assert models.published.paper_row("od_resnet34", 1) is None  # not in the paper's tables
    assert len(models.published.PAPER_ROWS) == 18
