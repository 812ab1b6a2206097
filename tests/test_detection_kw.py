"""KernelWarehouse backbones in the mmdet bridge: the released detectors' backbones (ResNet50 and MobileNetV2 1.0,
1x and 4x) with the released state-dict layout and the released AdamW 1x recipe, a released-layout ImageNet
checkpoint loaded through init_cfg with every key matched, tau 0, norm_eval over the attention's BatchNorm1d, the
tau hook, and the demo twin trained and tested for real by the repository's commands."""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys

import pytest
import timm
import torch
from mmengine.config import Config
from torch import nn

import detection.plugins  # noqa: F401  (registers the backbones and hooks)
from detection.compat import load_from_local
from detection.demo_coco import make_demo_coco
from kw_released_layout import released_layout
from models import load_checkpoint
from models.complexity import count_params
from models.published import KW_ROWS
from odconv import KWAttention, KWConvNd, set_temperature

from mmdet.registry import MODELS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(ROOT, "configs", "mmdet")

# The released KW Mask R-CNN configs: ours -> (zoo architecture, kw_ratio).
COCO_CONFIGS = {
    "mask-rcnn_kw1x-r50_fpn_1x_coco_adamw.py": ("resnet50", 1),
    "mask-rcnn_kw4x-r50_fpn_1x_coco_adamw.py": ("resnet50", 4),
    "mask-rcnn_kw1x-mobilenetv2-100_fpn_1x_coco_adamw.py": ("mobilenetv2_100", 1),
    "mask-rcnn_kw4x-mobilenetv2-100_fpn_1x_coco_adamw.py": ("mobilenetv2_100", 4),
}


def _taus(module: nn.Module) -> set[float]:
    return {float(m.attention.tau) for m in module.modules() if isinstance(m, KWConvNd) and m.attention is not None}


def _static_state(arch: str) -> dict:
    with torch.device("meta"):
        return timm.create_model("static_" + arch).state_dict()


def _without_classifier(layout: dict, arch: str) -> dict:
    head = "fc." if arch.startswith("resnet") else "classifier."
    return {k: v for k, v in layout.items() if not k.startswith(head)}


@pytest.mark.parametrize("config", sorted(COCO_CONFIGS))
def test_coco_config_builds_the_released_backbone_with_the_released_recipe(config):
    arch, ratio = COCO_CONFIGS[config]
    cfg = Config.fromfile(os.path.join(CONFIGS, config))
    with torch.device("meta"):  # the layout and counts need no memory (R50 4x: 102M backbone parameters)
        detector = MODELS.build(cfg.model)
    backbone = detector.backbone
    assert type(backbone).__name__ == ("KWResNet" if arch.startswith("resnet") else "KWMobileNetV2")
    assert backbone.body.kw_ratio == ratio
    # Every backbone key and shape is the released ImageNet model's, less its classifier: the released checkpoint
    # loads with every key matched, and the backbone counts the released table's parameters less the classifier.
    released = _without_classifier(released_layout(arch, ratio, _static_state(arch)), arch)
    assert {k: tuple(v.shape) for k, v in backbone.body.state_dict().items()} == released
    head = 2048 * 1000 + 1000 if arch == "resnet50" else 1280 * 1000 + 1000
    assert round((count_params(backbone) + head) / 1e6, 2) == KW_ROWS[(arch, ratio)].params
    assert cfg.model.backbone.frozen_stages == 1 and cfg.model.backbone.norm_eval is True
    assert cfg.model.backbone.init_cfg.type == "Pretrained"
    assert cfg.model.backbone.get("drop_path_rate", 0.0) == (0.1 if arch == "resnet50" else 0.0)  # released defaults
    # The released AdamW 1x schedule.
    optimizer = cfg.optim_wrapper.optimizer
    assert (optimizer.type, optimizer.lr, tuple(optimizer.betas), optimizer.weight_decay) == \
        ("AdamW", 1e-4, (0.9, 0.999), 0.05)
    assert cfg.optim_wrapper.type == "OptimWrapper"  # no mixed precision in the release
    assert cfg.optim_wrapper.paramwise_cfg.custom_keys == {"norm": {"decay_mult": 0.0}}
    warmup, steps = cfg.param_scheduler
    assert (warmup.type, warmup.start_factor, warmup.end, warmup.by_epoch) == ("LinearLR", 0.001, 500, False)
    assert (steps.type, steps.milestones, steps.gamma) == ("MultiStepLR", [8, 11], 0.1)
    assert cfg.train_cfg.max_epochs == 12 and cfg.train_dataloader.batch_size == 2
    assert cfg.find_unused_parameters is True
    assert [t["type"] for t in cfg.train_dataloader.dataset.pipeline][:4] == \
        ["LoadImageFromFile", "LoadAnnotations", "RandomFlip", "RandomChoice"]  # DETR-style multi-scale crops
    assert cfg.model.roi_head.mask_head.num_classes == 80


def _released_checkpoint(tmp_path, arch: str, ratio: float) -> tuple[dict, str]:
    """A state dict with the released layout (re-derived from the released code, not from models/kw.py), random
    values and non-trivial BN statistics, saved in the released training format (DDP prefix, argparse args)."""
    gen = torch.Generator().manual_seed(0)
    state = {}
    for k, shape in released_layout(arch, ratio, _static_state(arch)).items():
        if k.endswith("num_batches_tracked"):
            state[k] = torch.tensor(7)
        elif k.endswith("running_var"):
            state[k] = torch.rand(shape, generator=gen) + 0.5
        else:
            state[k] = torch.randn(shape, generator=gen) * 0.05
    path = str(tmp_path / f"kw_{arch}_{ratio}x.pth")
    torch.save({"model": {"module." + k: v for k, v in state.items()}, "optimizer": {}, "epoch": 299, "scaler": {},
                "args": argparse.Namespace(model="kw_" + arch)}, path)
    return state, path


@pytest.mark.parametrize("type_name, kwargs, arch, ratio", [
    ("KW_ResNet", dict(depth=18), "resnet18", 1),
    ("KW_MobileNetV2", dict(widen_factor=1.0), "mobilenetv2_100", 1),
])
def test_released_imagenet_checkpoint_loads_as_init_cfg_with_every_key_matched(tmp_path, type_name, kwargs, arch,
                                                                              ratio):
    state, path = _released_checkpoint(tmp_path, arch, ratio)
    backbone = MODELS.build(dict(type=type_name, kw_ratio=ratio, init_cfg=dict(type="Pretrained", checkpoint=path),
                                 **kwargs))
    set_temperature(backbone, 1.0)  # where ImageNet training started: fine-tuning must run at tau 0
    backbone.init_weights()
    assert _taus(backbone) == {0.0}
    own = backbone.body.state_dict()
    expected = _without_classifier(state, arch)
    assert own.keys() == expected.keys()
    for k, v in expected.items():
        torch.testing.assert_close(own[k], v, rtol=0, atol=0, msg=k)
    # The backbone computes what the classification network with that checkpoint computes, stage by stage.
    classifier = timm.create_model("kw_" + arch, kw_ratio=ratio)
    assert load_checkpoint(classifier, path) == ([], [])
    set_temperature(classifier, 0.0)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected_stages = classifier.eval().forward_stages(x)
        got = backbone.eval()(x)
    for e, g in zip(expected_stages, got):
        torch.testing.assert_close(g, e, rtol=0, atol=0)


def test_norm_eval_covers_the_attention_batchnorm_and_frozen_stages_leave_the_warehouses_training():
    backbone = MODELS.build(dict(type="KW_ResNet", depth=18, kw_ratio=1, frozen_stages=1, norm_eval=True)).train()
    attention = [m.norm1 for m in backbone.modules() if isinstance(m, KWAttention)]
    assert attention and all(isinstance(bn, nn.BatchNorm1d) for bn in attention)
    assert not any(m.training for m in backbone.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm))
    body = backbone.body
    assert not any(p.requires_grad for m in (body.conv1, body.bn1, body.layer1) for p in m.parameters())
    assert all(p.requires_grad for m in (body.layer2, body.layer3, body.layer4) for p in m.parameters())
    # The cells live in the warehouses, shared across stages (layer1's with layer2's first block): as released,
    # frozen_stages does not freeze them.
    assert all(p.requires_grad for p in body.warehouse_manager.parameters())
    # One image per GPU: with the attention BN frozen it runs, and the unfrozen attentions and cells get gradients.
    sum(o.mean() for o in backbone(torch.randn(1, 3, 64, 64))).backward()
    assert body.layer2[1].conv1.attention.norm1.weight.grad is not None
    assert body.layer1[0].conv1.attention.fc1.weight.grad is None
    assert all(w.grad is not None for w in body.warehouse_manager.weights)

    scratch = MODELS.build(dict(type="KW_ResNet", depth=18, kw_ratio=1, frozen_stages=-1, norm_eval=False,
                                attention_norm_eval=True)).train()
    bns = [m for m in scratch.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    attention = {id(m.norm1) for m in scratch.modules() if isinstance(m, KWAttention)}
    assert all(bn.training != (id(bn) in attention) for bn in bns)
    assert all(p.requires_grad for p in scratch.parameters())


def test_backbone_outputs_and_per_sample_attention_norm():
    for cfg, channels in [(dict(type="KW_ResNet", depth=18, kw_ratio=0.5), [64, 128, 256, 512]),
                          (dict(type="KW_MobileNetV2", widen_factor=0.5, kw_ratio=1, attention_norm="layer"),
                           [16, 16, 48, 1280])]:
        backbone = MODELS.build(dict(out_indices=(1, 2, 3), **cfg))
        assert backbone.out_channels == channels[1:]
        outs = backbone(torch.randn(2, 3, 64, 96))
        assert [tuple(o.shape) for o in outs] == [(2, c, 64 // 2 ** (i + 2), 96 // 2 ** (i + 2))
                                                  for i, c in zip((1, 2, 3), channels[1:])]
        norms = {type(m.norm1).__name__ for m in backbone.modules() if isinstance(m, KWAttention)}
        assert norms == {"LayerNorm" if cfg.get("attention_norm") == "layer" else "BatchNorm1d"}
        assert not [n for n, _ in backbone.named_parameters() if n.startswith(("body.fc", "body.classifier"))]


@pytest.mark.parametrize("cfg, message", [
    (dict(type="KW_ResNet", depth=34), "depth must be 18 or 50 for a KernelWarehouse ResNet, got 34"),
    (dict(type="KW_ResNet", depth=18, kw_ratio=3), r"kw_ratio must be one of \[0.25, 0.5, 1, 2, 4\], got 3"),
    (dict(type="KW_MobileNetV2", kw_ratio=0.5), r"kw_ratio must be one of \[1, 2, 4\], got 0.5"),
    (dict(type="KW_MobileNetV2", widen_factor=0.75), "widen_factor must be 0.5 or 1.0"),
    (dict(type="KW_ResNet", depth=18, attention_norm="group"), "attention_norm must be 'batch' .released. or 'layer'"),
])
def test_bad_kw_backbone_arguments_raise(cfg, message):
    with pytest.raises(ValueError, match=message):
        MODELS.build(cfg)


def test_tau_hook_falls_from_1_to_0_per_iteration_as_released():
    from types import SimpleNamespace

    from mmengine.logging import MessageHub

    from detection.hooks import KWTauHook

    backbone = MODELS.build(dict(type="KW_ResNet", depth=18, kw_ratio=1))
    runner = SimpleNamespace(model=backbone, train_dataloader=range(10), max_epochs=4, iter=0,
                             message_hub=MessageHub.get_instance("test_kw_tau_hook"))
    hook = KWTauHook(epochs=2)
    hook.before_train(runner)
    seen = []
    for it in range(30):  # 3 epochs of 10 iterations
        runner.iter = it
        hook.before_train_iter(runner, it % 10)
        taus = _taus(backbone)
        assert len(taus) == 1
        seen.append(taus.pop())
    # released engine.py: tau = max(0, 1 - it / (iters_per_epoch * temp_epoch)), it 1-based
    assert seen[:20] == pytest.approx([1 - (it + 1) / 20 for it in range(20)])
    assert seen[19:] == [0.0] * 11
    assert runner.message_hub.get_scalar("train/tau").current() == 0.0
    with pytest.raises(ValueError, match=r"epochs \(5\) must not exceed train_cfg.max_epochs \(4\)"):
        KWTauHook(epochs=5).before_train(runner)
    with pytest.raises(ValueError, match="epochs must be > 0"):
        KWTauHook(epochs=0)


def test_demo_twins_share_everything_but_the_backbone():
    for det, ratio in (("faster", 1), ("faster", 4), ("mask", 1), ("mask", 4)):
        cfg = Config.fromfile(os.path.join(CONFIGS, "demo", f"{det}-rcnn_kw{ratio}x-r18_fpn_demo.py"))
        base = Config.fromfile(os.path.join(CONFIGS, "demo", f"{det}-rcnn_r18_fpn_demo.py"))
        assert cfg.model.backbone.type == "KW_ResNet" and cfg.model.backbone.kw_ratio == ratio
        assert cfg.model.backbone.attention_norm == "layer"
        assert [h["type"] for h in cfg.custom_hooks] == ["KWTauHook"]
        for key in ("optim_wrapper", "param_scheduler", "train_cfg", "train_dataloader", "test_dataloader"):
            assert cfg[key] == base[key], key
        assert {k: v for k, v in cfg.model.items() if k != "backbone"} == \
            {k: v for k, v in base.model.items() if k != "backbone"}


def _command(module: str, *args: str) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


@pytest.mark.slow
def test_kw_demo_detector_trains_and_tests_on_the_demo_set(tmp_path):
    """The KW demo Mask R-CNN through `detection.train` then `detection.test`: the loss falls, the warehouses
    train, tau ends at 0, and the test command loads the checkpoint strictly and scores boxes and masks."""
    root = str(make_demo_coco(str(tmp_path / "coco"), num_train=8, num_val=4))
    config = os.path.join(CONFIGS, "demo", "mask-rcnn_kw1x-r18_fpn_demo.py")
    work = tmp_path / "work"
    options = [f"train_dataloader.dataset.data_root={root}/", f"val_dataloader.dataset.data_root={root}/",
               f"test_dataloader.dataset.data_root={root}/", f"test_evaluator.ann_file={root}/annotations/val.json",
               f"val_evaluator.ann_file={root}/annotations/val.json", "train_cfg.max_epochs=2",
               "train_cfg.val_interval=2", "param_scheduler.1.milestones=[2]", "default_hooks.checkpoint.interval=2",
               "default_hooks.logger.interval=1", "param_scheduler.0.end=2"]
    _command("detection.train", config, "--work-dir", str(work), "--cfg-options", *options)
    checkpoint = work / "epoch_2.pth"
    # Four steps leave every foreground score under the usual 0.05 threshold: keep them all, so the test command
    # runs the whole path (boxes, masks, the metric) on real detections.
    test = _command("detection.test", config, str(checkpoint), "--work-dir", str(work), "--cfg-options", *options,
                    "model.test_cfg.rcnn.score_thr=0.0")

    logs = [json.loads(line) for p in work.glob("*/vis_data/scalars.json") for line in p.read_text().splitlines()]
    train = [r for r in logs if "loss" in r]
    assert len(train) == 4  # 2 epochs of 2 iterations (4 images each)
    assert all(math.isfinite(r["loss"]) for r in train)
    assert [r["tau"] for r in train] == [0.5, 0.0, 0.0, 0.0]  # annealed over epoch 1, 0 from its last step on
    assert train[-1]["loss"] < train[0]["loss"], [r["loss"] for r in train]

    state = load_from_local(str(checkpoint), map_location="cpu")["state_dict"]
    fresh = MODELS.build(Config.fromfile(config).model).state_dict()
    cells = [k for k in state if k.startswith("backbone.body.warehouse_manager.weights.")]
    assert len(cells) == 4 and not any(torch.equal(state[k], fresh[k]) for k in cells)  # every warehouse trained

    metrics = json.loads((work / "results.metrics.json").read_text())
    assert len(metrics) == 24 and all(0.0 <= metrics[f"coco/{t}_AP"] <= 1.0 for t in ("bbox", "segm"))
    assert "Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all | maxDets=100 ]" in test.stdout
    assert json.loads((work / "results.bbox.json").read_text()) and json.loads((work / "results.segm.json").read_text())
