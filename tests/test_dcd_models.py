"""The DCD zoo (models/dcd.py): the released checkpoints' names and shapes load strictly, bare and in the released
training script's format; the networks run and give timm's features and heads; one trains on the digits with the
DCD recipe's label smoothing and mixup ramp."""
from __future__ import annotations

import json

import numpy as np
import pytest
import timm
import torch

import models
from models import CheckpointMismatchError, extract_state_dict, load_checkpoint, load_state_dict_checked
from odconv import DCDConv2d, DCDLinear, DCDModule
from conftest import REPO

# Key -> shape of the released models, written by scripts/dcd_released_layout.py from the released constructors
# (github.com/liyunsheng13/dcd @ 6a5e27f) with the arguments of the released evaluation commands.
RELEASED = json.loads((REPO / "tests" / "fixtures" / "dcd_released_layout.json").read_text())


def _released_state(name: str, device: str = "meta") -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    state = {}
    for key, shape in RELEASED[name].items():
        if device == "meta" or key.endswith("num_batches_tracked"):
            state[key] = torch.zeros(shape, dtype=torch.long if key.endswith("num_batches_tracked") else None,
                                     device=device)
        else:
            state[key] = torch.randn(shape, generator=gen)
    return state


def test_the_fixture_is_the_released_layout():
    """Spot checks of the fixture against the released code, read by hand: ResNet50's conv_dy(64, 64, 1x1) has
    L = 8 and a trunk of 64 // 16 = 4; ResNet18's pooled conv_basic_dy(64) has L = 16 over 256 features; the
    MobileNetV2 blocks are flat Sequentials, the last 1x1 conv sits outside `features`; DYCls has L = 32."""
    r50, r18, mv2 = RELEASED["dcd_resnet50"], RELEASED["dcd_resnet18"], RELEASED["dcd_mobilenetv2_100"]
    assert r50["layer1.0.conv1.q.weight"] == [8, 64, 1, 1] and r50["layer1.0.conv1.fc.0.weight"] == [4, 64]
    assert r50["layer1.0.conv2.conv.weight"] == [64, 64, 3, 3] and r50["classifier.1.cls.weight"] == [1000, 2048]
    assert r18["layer1.0.conv1.fc.0.weight"] == [16, 256] and r18["layer1.0.conv1.fc_phi.weight"] == [256, 16]
    assert mv2["features.2.conv.0.conv_q.weight"] == [8, 16, 1, 1] and mv2["features.2.conv.3.weight"] == [96, 1, 3, 3]
    assert mv2["conv.0.weight"] == [1280, 320, 1, 1] and mv2["classifier.1.fc_phi.weight"] == [1024, 32]
    assert not any(k.startswith("features.18") for k in mv2)


@pytest.mark.parametrize("name", sorted(RELEASED))
def test_zoo_has_the_released_names_and_shapes(name):
    model = timm.create_model(name, device="meta")
    assert {k: list(v.shape) for k, v in model.state_dict().items()} == RELEASED[name]
    missing, unexpected = load_state_dict_checked(model, _released_state(name), strict=True)
    assert missing == unexpected == []


def test_released_resnet50_loads_in_the_training_format():
    """The released script saves {'epoch', 'arch', 'state_dict' (DataParallel's `module.` keys), 'best_prec1',
    'optimizer'}; its weight files are that dict."""
    state = _released_state("dcd_resnet50")
    wrapped = {"epoch": 120, "arch": "resnet50_dcd", "best_prec1": 0.0,
               "state_dict": {"module." + k: v for k, v in state.items()},
               "optimizer": {"state": {}, "param_groups": [{"lr": 0.0, "momentum": 0.9}]}}
    model = timm.create_model("dcd_resnet50", device="meta")
    assert load_state_dict_checked(model, extract_state_dict(wrapped), strict=True) == ([], [])


def test_released_mobilenetv2_checkpoint_file_loads_and_keeps_its_values(tmp_path):
    state = _released_state("dcd_mobilenetv2_100", device="cpu")
    path = tmp_path / "mv2x1.0_dcd.pth.tar"
    torch.save({"epoch": 300, "arch": "mobilenetv2_dcd", "best_prec1": 0.0,
                "state_dict": {"module." + k: v for k, v in state.items()}, "optimizer": {"state": {}}}, path)
    model = timm.create_model("dcd_mobilenetv2_100")
    assert load_checkpoint(model, path) == ([], [])
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    bare = tmp_path / "bare.pth"
    torch.save(state, bare)
    assert load_checkpoint(timm.create_model("dcd_mobilenetv2_100"), bare) == ([], [])


def test_a_layout_of_other_sizes_is_refused_naming_the_keys():
    """The released constructor's default fc_squeeze is 8, the released checkpoint's 16: the wrong one is caught."""
    model = timm.create_model("dcd_mobilenetv2_100", fc_squeeze=8, device="meta")
    mismatch = r"shape mismatches .*features\.2\.conv\.0\.fc\.0\.weight \(4, 64\) vs model \(8, 64\)"
    with pytest.raises(CheckpointMismatchError, match=mismatch):
        load_state_dict_checked(model, _released_state("dcd_mobilenetv2_100"))


def test_where_the_dcd_layers_are():
    r18, r50 = timm.create_model("dcd_resnet18", device="meta"), timm.create_model("dcd_resnet50", device="meta")
    mv2 = timm.create_model("dcd_mobilenetv2_100", device="meta")
    assert {m.pool_size for m in r18.modules() if isinstance(m, DCDConv2d)} == {2}
    assert {m.pool_size for m in r50.modules() if isinstance(m, DCDConv2d)} == {1}
    assert sum(isinstance(m, DCDConv2d) for m in r50.modules()) == 3 * 16
    assert type(r50.conv1) is torch.nn.Conv2d and type(r50.layer2[0].downsample[0]) is torch.nn.Conv2d
    assert sum(isinstance(m, DCDModule) for m in mv2.modules()) == 2 * 16  # pw and pw-linear of the 16 t=6 blocks
    assert all(isinstance(m.classifier[1], DCDLinear) for m in (r18, r50, mv2))
    assert (r18.classifier[0].p, r50.classifier[0].p, mv2.classifier[0].p) == (0.1, 0.1, 0.2)  # released commands
    assert models.dcd_resnet34 is not None and "dcd_resnet101" in models.DCD_MODEL_NAMES


@pytest.mark.parametrize("name", ["dcd_resnet18", "dcd_mobilenetv2_100"])
def test_runs_and_gives_timm_features_and_heads(name):
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=10)
    x = torch.randn(2, 3, 64, 64)
    loss = model(x).logsumexp(1).sum()  # train mode: batch statistics in every BatchNorm, the DCD layers' too
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())
    model.eval()
    with torch.no_grad():
        assert model(x).shape == (2, 10)
        features = model.forward_features(x)
        assert features.shape == (2, model.num_features, 2, 2)
        assert model.forward_head(features, pre_logits=True).shape == (2, model.head_hidden_size)
        stages = timm.create_model(name, features_only=True).eval()(x)
        assert [f.shape[1] for f in stages] == ([64, 128, 256, 512] if "resnet" in name else [24, 32, 96, 1280])
        assert [f.shape[-1] for f in stages] == [16, 8, 4, 2]
        assert [f.shape for f in model.forward_stages(x)] == [f.shape for f in stages]
        model.reset_classifier(0)
        assert isinstance(model.get_classifier(), torch.nn.Identity) and model(x).shape == (2, model.num_features)
        model.reset_classifier(5, "")
        assert isinstance(model.get_classifier(), DCDLinear) and model.forward_features(x).dim() == 4
    with pytest.raises(ValueError, match="no weights can be downloaded"):
        timm.create_model(name, pretrained=True)


def test_a_dcd_model_trains_on_the_digits_and_its_checkpoint_loads_back(cache_dir, tmp_path):
    """Two steps of dcd_resnet18 on the digits with the DCD recipe's label smoothing and mixup ramp, through the real
    loop; the checkpoint it writes carries the released names and loads strictly into a fresh model."""
    from conftest import TINY, compose_cfg
    from train.loop import run

    summary = run(compose_cfg(TINY + [
        "model=dcd_resnet18", f"paths.cache_dir={cache_dir}", f"paths.run_dir={tmp_path}", "trainer.epochs=1",
        "trainer.limit_train_batches=2", "trainer.limit_val_batches=1", "data.label_smoothing=0.1", "data.mixup=0.2",
        "data.mixup_ramp_epochs=100"]))  # the recipe's ramp: epoch 0 mixes nothing, its targets still smoothed
    assert summary["status"] == "completed" and summary["step"] == 2
    ck = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)
    assert ck["config"]["model"]["name"] == "dcd_resnet18" and "classifier.1.fc_phi.weight" in ck["model"]
    fresh = timm.create_model("dcd_resnet18", num_classes=ck["model"]["classifier.1.cls.weight"].shape[0])
    assert load_checkpoint(fresh, tmp_path / "checkpoints" / "last.pt") == ([], [])
    assert int(fresh.layer1[0].conv1.bn2.num_batches_tracked) == 2  # the latent BatchNorms trained


def test_mixup_ramp_follows_the_released_script():
    """main.py: alpha x epoch / 100 for the first 100 epochs, then alpha; an alpha of 0 leaves the images alone."""
    from train.mixup import build_mixup, ramp_mixup

    mixup = build_mixup(10, mixup_alpha=0.2, label_smoothing=0.1)
    alphas = [ramp_mixup(mixup, 0.2, epoch, 100) for epoch in (0, 50, 99, 100, 119)]
    assert alphas == pytest.approx([0.0, 0.1, 0.198, 0.2, 0.2])
    assert ramp_mixup(mixup, 0.2, 0, 0) == 0.2  # no ramp: constant
    ramp_mixup(mixup, 0.2, 0, 100)
    x, y = torch.randn(4, 3, 8, 8), torch.tensor([0, 1, 2, 3])
    mixed, target = mixup(x.clone(), y)
    assert torch.equal(mixed, x)
    assert torch.allclose(target, torch.full((4, 10), 0.01) + 0.9 * torch.eye(10)[:4])
    ramp_mixup(mixup, 0.2, 50, 100)
    np.random.seed(0)  # timm draws lam with numpy; with this seed lam is 0.85
    assert mixup.mixup_enabled and not torch.equal(mixup(x.clone(), y)[0], x)
