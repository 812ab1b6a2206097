"""Detectors with ODConv backbones run for real on the CPU: a training step of Faster and Mask R-CNN, and the demo
train-then-test commands reaching a box AP well above zero on the embedded digits set."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest
import torch
from mmengine.config import Config
from mmengine.dataset import pseudo_collate
from mmengine.optim import build_optim_wrapper
from mmengine.registry import init_default_scope

import detection  # noqa: F401  (registers the backbones)
from detection.demo_coco import make_demo_coco
from odconv import ODConv2d

from mmdet.registry import DATASETS, MODELS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO = os.path.join(ROOT, "configs", "mmdet", "demo")


def _with_data_root(cfg: Config, root: str) -> Config:
    for stage in ("train", "val", "test"):
        cfg[f"{stage}_dataloader"]["dataset"]["data_root"] = root + "/"
    for stage in ("val", "test"):
        cfg[f"{stage}_evaluator"]["ann_file"] = os.path.join(root, "annotations", "val.json")
    return cfg


@pytest.mark.slow
@pytest.mark.parametrize("config", ["faster-rcnn_od4x-r50_fpn_demo.py", "mask-rcnn_od4x-mobilenetv2-100_fpn_demo.py"])
def test_training_step_and_inference_with_an_odconv_backbone(tmp_path, config):
    root = str(make_demo_coco(str(tmp_path / "coco"), num_train=4, num_val=2))
    cfg = _with_data_root(Config.fromfile(os.path.join(DEMO, config)), root)
    init_default_scope("mmdet")
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    model.init_weights()
    assert any(isinstance(m, ODConv2d) for m in model.backbone.modules())
    optim = build_optim_wrapper(model, cfg.optim_wrapper)
    train_set = DATASETS.build(cfg.train_dataloader.dataset)
    batch = pseudo_collate([train_set[0], train_set[1]])

    watched = next(m for m in model.backbone.modules() if isinstance(m, ODConv2d)).weight
    before = watched.detach().clone()
    model.train()
    log = model.train_step(batch, optim)
    expected = {"loss_rpn_cls", "loss_rpn_bbox", "loss_cls", "loss_bbox", "loss"}
    expected |= {"loss_mask"} if "mask" in config else set()
    assert expected <= set(log)
    assert all(math.isfinite(float(torch.as_tensor(log[k]).detach())) for k in expected)
    assert not torch.equal(before, watched.detach()), "the ODConv kernel bank did not train"

    model.eval()
    test_set = DATASETS.build(cfg.test_dataloader.dataset)
    with torch.no_grad():
        (result,) = model.val_step(pseudo_collate([test_set[0]]))
    pred = result.pred_instances
    assert pred.bboxes.shape[1] == 4 and len(pred.scores) == len(pred.labels) == len(pred.bboxes)
    if "mask" in config:
        assert tuple(pred.masks.shape[1:]) == tuple(result.ori_shape)


# Box AP (IoU .50:.95) of the demo Faster R-CNN (static ResNet18 twin, random init) after 150 iterations: about
# 0.04-0.08 here; boxes and labels that had learned nothing would score 0.000.
DEMO_AP_FLOOR = 0.02


@pytest.mark.slow
def test_demo_train_then_test_commands_reach_real_box_ap(tmp_path):
    root = str(make_demo_coco(str(tmp_path / "coco"), num_train=200, num_val=50))
    config = os.path.join(DEMO, "faster-rcnn_r50_fpn_demo.py")
    work = tmp_path / "work"
    options = [f"train_dataloader.dataset.data_root={root}/", f"val_dataloader.dataset.data_root={root}/",
               f"test_dataloader.dataset.data_root={root}/", f"test_evaluator.ann_file={root}/annotations/val.json",
               f"val_evaluator.ann_file={root}/annotations/val.json", "train_cfg.max_epochs=3",
               "train_cfg.val_interval=3", "param_scheduler.1.milestones=[3]", "default_hooks.checkpoint.interval=3",
               "randomness.seed=0"]
    train = subprocess.run([sys.executable, "-m", "detection.train", config, "--work-dir", str(work),
                            "--cfg-options", *options], cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert train.returncode == 0, train.stdout[-3000:] + train.stderr[-3000:]
    checkpoint = work / "epoch_3.pth"
    assert checkpoint.is_file()

    test = subprocess.run([sys.executable, "-m", "detection.test", config, str(checkpoint), "--work-dir", str(work),
                           "--cfg-options", *options], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert test.returncode == 0, test.stdout[-3000:] + test.stderr[-3000:]
    # pycocotools' standard summary: AP at maxDets 100, AR at 1, 10 and 100 detections.
    assert "Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all | maxDets=100 ]" in test.stdout
    assert "Average Recall     (AR) @[ IoU=0.50:0.95 | area=   all | maxDets=  1 ]" in test.stdout
    metrics = json.loads((work / "results.metrics.json").read_text())
    assert len(metrics) == 12
    assert metrics["coco/bbox_AP"] > DEMO_AP_FLOOR, metrics
    detections = json.loads((work / "results.bbox.json").read_text())
    assert detections and {"image_id", "bbox", "score", "category_id"} <= set(detections[0])
