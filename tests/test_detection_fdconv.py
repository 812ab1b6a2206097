"""The FDConv detection backbone (`FD_ResNet`): its parameter overhead against the published one, the released
configs, loading a static or an FDConv ImageNet checkpoint, and which parameters train in frozen stages."""
from __future__ import annotations

import os

import pytest
import timm
import torch
from mmengine.config import Config

import detection.plugins  # noqa: F401  (registers the backbones)
import models
from fdconv_reference import exact_copy_float32_tolerance
from models.complexity import count_params
from odconv import FDConv2d, released_fdconv_state_dict
from odconv_reference import rel_err

from mmdet.registry import MODELS

CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "mmdet")


def test_backbone_overhead_is_the_published_one():
    # Chen et al. (CVPR 2025) Table 1: Faster R-CNN R50 + FDConv, +3.6M parameters over the 23.5M backbone.
    fd = MODELS.build(dict(type="FD_ResNet", depth=50, kernel_num=64))
    static = MODELS.build(dict(type="StaticResNet", depth=50))
    assert round(count_params(static) / 1e6, 1) == 23.5
    assert round((count_params(fd) - count_params(static)) / 1e6, 1) == 3.6
    # Every bottleneck conv is FDConv (all have >= 64 channels); the stem and the 4 shortcuts stay static.
    assert sum(isinstance(m, FDConv2d) and m.is_dynamic for m in fd.modules()) == 16 * 3


@pytest.mark.parametrize("config, optimizer", [("faster-rcnn_fd-r50_fpn_1x_coco.py", "SGD"),
                                               ("mask-rcnn_fd-r50_fpn_1x_coco_adamw.py", "AdamW")])
def test_released_configs_load(config, optimizer):
    cfg = Config.fromfile(os.path.join(CONFIGS, config))
    assert cfg.model.backbone.type == "FD_ResNet" and cfg.model.backbone.kernel_num == 64
    assert cfg.optim_wrapper.optimizer.type == optimizer
    if optimizer == "AdamW":
        assert cfg.optim_wrapper.optimizer.lr == 1e-4 and cfg.optim_wrapper.optimizer.weight_decay == 0.05
        assert cfg.param_scheduler[-1].milestones == [10, 11] and cfg.train_cfg.max_epochs == 12
        assert cfg.optim_wrapper.type == "AmpOptimWrapper" and cfg.train_dataloader.batch_size == 4


def _static_checkpoint(tmp_path):
    torch.manual_seed(0)
    static = timm.create_model("static_resnet18", num_classes=10).eval()
    with torch.no_grad():
        for m in static.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    path = tmp_path / "static_resnet18.pth"
    torch.save(static.state_dict(), path)
    return static, path


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["static", "released-fdconv"])
def test_static_imagenet_checkpoint_starts_the_exact_init_backbone_as_the_static_network(tmp_path, layout):
    static, path = _static_checkpoint(tmp_path)
    if layout == "released-fdconv":  # what the released converter writes from the same weights
        torch.save(released_fdconv_state_dict(static.state_dict()), path)
    backbone = MODELS.build(dict(type="FD_ResNet", depth=18, kernel_num=16, gate_init="exact",
                                 init_cfg=dict(type="Pretrained", checkpoint=str(path))))
    backbone.init_weights()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        want, got = static.forward_stages(x), backbone.eval()(x)
    layers = [m for m in backbone.modules() if isinstance(m, FDConv2d) and m.is_dynamic]
    tol = exact_copy_float32_tolerance(layers, max_hw=16 * 16)
    for w, g in zip(want, got):
        assert rel_err(g, w) < tol


def test_checkpoint_of_another_network_is_refused(tmp_path):
    torch.save(timm.create_model("static_resnet34").state_dict(), tmp_path / "r34.pth")
    backbone = MODELS.build(dict(type="FD_ResNet", depth=18, kernel_num=16,
                                 init_cfg=dict(type="Pretrained", checkpoint=str(tmp_path / "r34.pth"))))
    with pytest.raises(models.CheckpointMismatchError, match="unexpected"):
        backbone.init_weights()


def test_frozen_stage_trains_only_its_modulation():
    backbone = MODELS.build(dict(type="FD_ResNet", depth=18, kernel_num=16, frozen_stages=1)).train()
    layer1 = dict(backbone.body.layer1.named_parameters())
    trainable = {n for n, p in layer1.items() if p.requires_grad}
    assert trainable == {n for n in layer1 if "KSM" in n or "FBM" in n} and trainable
    assert not any(p.requires_grad for p in backbone.body.conv1.parameters())
    assert all(p.requires_grad for p in backbone.body.layer2.parameters())
