"""The KernelWarehouse zoo: every released ImageNet row builds with the released parameter count and the released
state-dict layout, loads a released-layout state dict strictly (bare, in the released training format, with DDP's
prefix), names the first differing warehouse for a checkpoint of another setting, trains a step and runs tau."""
from __future__ import annotations

import argparse

import pytest
import timm
import torch

import models
import odconv
from kw_released_layout import released_layout
from models import load_checkpoint, load_state_dict_checked
from models.checkpoint import CheckpointMismatchError, extract_state_dict
from models.complexity import count_params
from models.kw import KW_MODEL_NAMES, RELEASED, resnet_warehouse
from models.published import KW_ROWS

ROWS = [(arch, r) for arch, ratios in RELEASED.items() for r in ratios]


def _meta(arch: str, ratio: float, **kwargs):
    with torch.device("meta"):
        return timm.create_model("kw_" + arch, kw_ratio=ratio, **kwargs)


def _static_state(arch: str) -> dict:
    with torch.device("meta"):
        return timm.create_model("static_" + arch).state_dict()


def _layout_params(layout: dict) -> int:
    buffers = ("running_mean", "running_var", "num_batches_tracked")
    return sum(int(torch.Size(s).numel()) for k, s in layout.items() if not k.endswith(buffers))


@pytest.mark.parametrize("arch,ratio", ROWS)
def test_released_row_count_and_layout(arch, ratio):
    model = _meta(arch, ratio)
    layout = released_layout(arch, ratio, _static_state(arch))
    own = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert sorted(own) == sorted(layout), (sorted(set(own) ^ set(layout)))[:5]
    assert own == layout
    n = count_params(model)
    assert n == _layout_params(layout)
    published = KW_ROWS[(arch, ratio)]
    if (arch, ratio) == ("resnet18", 0.25):
        # The README prints 4.08M; the released code with configs/resnet18/kw1d4x_resnet18.json builds 4,031,768
        # parameters (the released layout above, re-derived independently of models/kw.py).
        assert n == 4_031_768 and published.params == 4.08
    else:
        assert round(n / 1e6, 2) == published.params, f"{n} parameters, README {published.params}M"


@pytest.mark.parametrize("arch,ratio", ROWS)
def test_released_layout_loads_strictly(arch, ratio):
    model = _meta(arch, ratio)
    layout = released_layout(arch, ratio, _static_state(arch))
    bare = {k: torch.empty(s, device="meta") for k, s in layout.items()}
    assert load_state_dict_checked(model, bare) == ([], [])
    # the released utils.save_model format, keys with DDP's prefix
    training = {"model": {"module." + k: v for k, v in bare.items()}, "optimizer": {}, "epoch": 299, "scaler": {},
                "args": argparse.Namespace(model="kw_" + arch)}
    assert load_state_dict_checked(model, extract_state_dict(training)) == ([], [])


def test_checkpoint_of_another_setting_names_the_first_warehouse(tmp_path):
    one = timm.create_model("kw_mobilenetv2_050", kw_ratio=1)
    four = timm.create_model("kw_mobilenetv2_050", kw_ratio=4)
    path = tmp_path / "kw4x.pth"
    torch.save({"model": four.state_dict(), "epoch": 149, "args": argparse.Namespace(model="kw_mobilenetv2_050")},
               path)
    with pytest.raises(CheckpointMismatchError) as e:
        load_checkpoint(one, path)
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.split(": ", 1)[1].startswith("KernelWarehouse warehouse 0 (warehouse_manager.weights.0) holds cells "
                                            "(36, 16, 3, 1, 1) in the checkpoint but (9, 16, 3, 1, 1)")
    # a file in the released training format (argparse.Namespace under "args") round-trips exactly
    torch.save({"model": one.state_dict(), "optimizer": {}, "epoch": 149, "args": argparse.Namespace(lr=0.05)}, path)
    twin = timm.create_model("kw_mobilenetv2_050", kw_ratio=1)
    assert load_checkpoint(twin, path) == ([], [])
    assert all(torch.equal(a, b) for a, b in zip(one.state_dict().values(), twin.state_dict().values()))


def test_handover_rule():
    assert [resnet_warehouse(n, False) for n in ("layer1.0.conv1", "layer2.0.conv1", "layer2.0.conv2",
                                                 "layer2.0.downsample.0", "layer2.1.conv1")] == [
        "stage0_layer0_conv0", "stage0_layer0_conv0", "stage1_layer0_conv1", "stage0_layer1_conv0",
        "stage1_layer1_conv0"]
    assert resnet_warehouse("layer1.0.conv1", True) is None  # ResNet50: no stage before the first
    m = _meta("resnet50", 1)
    assert type(m.layer1[0].conv1) is torch.nn.Conv2d and type(m.layer1[0].downsample[0]) is torch.nn.Conv2d
    assert isinstance(m.layer2[0].downsample[0], odconv.KWConv2d)
    assert m.layer2[0].conv1.warehouse_id == 0 and m.layer2[0].conv2.warehouse_id == 1


def test_trains_a_step_and_tau_starts_as_a_static_network():
    torch.manual_seed(0)
    model = timm.create_model("kw_resnet18", kw_ratio=0.25, num_classes=10)
    assert model.kw_ratio == 0.25 and isinstance(model.layer1[0].conv1, odconv.KWConv2d)
    x, y = torch.randn(2, 3, 16, 16), torch.randint(0, 10, (2,))
    odconv.set_temperature(model, 1.0)
    torch.nn.functional.cross_entropy(model(x), y).backward()
    assert model.warehouse_manager.weights[0].grad.abs().sum() > 0
    assert model.layer1[0].conv1.attention.fc2.weight.grad.abs().sum() == 0  # tau = 1: the attention is unused
    odconv.set_temperature(model, 0.0)
    model.zero_grad()
    torch.nn.functional.cross_entropy(model(x), y).backward()
    assert model.layer1[0].conv1.attention.fc2.weight.grad.abs().sum() > 0
    rows = odconv.explain(model.eval(), x[:1])
    assert len(rows) == 19 and {r.reason for r in rows} == {"rule"}  # 16 block convs and 3 strided shortcuts
    # 16px input: 4x4 maps in stage 1 (64 x 9 >= 12 x 16: the batched GEMM per tap) down to 1x1 in stage 4
    assert {r.formulation for r in rows} == {"bmm"}


def test_registered_with_timm_and_bad_ratio():
    assert set(KW_MODEL_NAMES) <= set(timm.list_models("kw_*"))
    with pytest.raises(ValueError, match=r"kw_ratio must be one of \[0.25, 0.5, 1, 2, 4\], got 3"):
        models.kw.kw_resnet18(kw_ratio=3)
    with pytest.raises(ValueError, match="kw_mobilenetv2_100 has no kw_ratio 0.25"):
        models.kw.kw_mobilenetv2_100(kw_ratio=0.25)


@pytest.mark.parametrize("name, kwargs", [("kw_resnet18", dict(kw_ratio=0.25)), ("od_resnet18", dict(kernel_num=4))])
def test_channels_last_keeps_5d_kernels(name, kwargs):
    """trainer.channels_last: Module.to(memory_format=channels_last) raises for the 5-D warehouses and stacked
    kernels; the loop's conversion makes the 4-D kernels channels_last and leaves the 5-D ones, outputs unchanged."""
    from train.builders import to_channels_last

    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=10, **kwargs).eval()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        before = model(x)
    assert to_channels_last(model) is model
    assert model.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    assert all(p.is_contiguous() for p in model.parameters() if p.dim() == 5)
    with torch.no_grad():
        after = model(x.contiguous(memory_format=torch.channels_last))
    # Only float32 summation order may differ: 18 layers x safety 10 x sqrt(longest sum, 512 * 9) x 2^-24.
    assert float((after - before).norm() / before.norm()) < 18 * 10 * (512 * 9) ** 0.5 * 2.0 ** -24
