"""Detectors with ODConv backbones run for real on the CPU: a training step of Faster and Mask R-CNN, seeded runs
that repeat exactly, and the demo train-then-test commands reaching a box AP well above zero on the embedded digits
set, evaluating a released-layout checkpoint the same, and reporting AP 0 when no box is output."""
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

import detection.plugins  # noqa: F401  (registers the backbones)
from detection.compat import load_from_local
from detection.demo_coco import make_demo_coco
from detection.runner import load_config, train
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
@pytest.mark.parametrize("config", ["faster-rcnn_od4x-r18_fpn_demo.py", "mask-rcnn_od4x-mobilenetv2-050_fpn_demo.py"])
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


def _tiny_run(root: str, work, seed: int, name: str) -> dict[str, torch.Tensor]:
    """Three iterations of the ODConv demo Faster R-CNN (two images each); returns the trained weights."""
    cfg = _with_data_root(load_config(os.path.join(DEMO, "faster-rcnn_od4x-r18_fpn_demo.py"), work_dir=str(work),
                                      seed=seed), root)
    cfg.train_dataloader.batch_size = 2
    cfg.train_cfg.max_epochs = 1
    cfg.val_cfg = cfg.val_dataloader = cfg.val_evaluator = None
    cfg.default_hooks.checkpoint.interval = 1
    cfg.custom_hooks = [dict(type="ODConvTemperatureHook", init=30.0, epochs=1)]  # annealed within the one epoch
    cfg.experiment_name = name  # several runners in one process need distinct names
    runner = train(cfg)
    assert json.loads((work / "randomness.json").read_text())["seed"] == seed
    return {k: v.clone() for k, v in runner.model.state_dict().items()}


@pytest.mark.slow
def test_a_seed_repeats_a_run_exactly_and_another_seed_does_not(tmp_path):
    root = str(make_demo_coco(str(tmp_path / "coco"), num_train=6, num_val=2))
    first, again, other = (_tiny_run(root, tmp_path / name, seed, name)
                           for name, seed in (("first", 5), ("again", 5), ("other", 6)))
    assert first.keys() == again.keys() == other.keys()
    assert all(torch.equal(first[k], again[k]) for k in first), "the same seed gave different weights"
    assert not all(torch.equal(first[k], other[k]) for k in first), "different seeds gave the same weights"


# Box AP (IoU .50:.95) of the demo Faster R-CNN (static ResNet18 twin, random init) after 150 iterations: about
# 0.04-0.08 here; boxes and labels that had learned nothing would score 0.000.
DEMO_AP_FLOOR = 0.02


def _command(module: str, *args: str) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """The demo commands, trained briefly: `detection.train` then `detection.test` on its checkpoint."""
    tmp = tmp_path_factory.mktemp("demo_run")
    root = str(make_demo_coco(str(tmp / "coco"), num_train=200, num_val=50))
    config = os.path.join(DEMO, "faster-rcnn_r18_fpn_demo.py")
    work = tmp / "work"
    options = [f"train_dataloader.dataset.data_root={root}/", f"val_dataloader.dataset.data_root={root}/",
               f"test_dataloader.dataset.data_root={root}/", f"test_evaluator.ann_file={root}/annotations/val.json",
               f"val_evaluator.ann_file={root}/annotations/val.json", "train_cfg.max_epochs=3",
               "train_cfg.val_interval=3", "param_scheduler.1.milestones=[3]", "default_hooks.checkpoint.interval=3"]
    _command("detection.train", config, "--work-dir", str(work), "--cfg-options", *options)
    checkpoint = work / "epoch_3.pth"
    test = _command("detection.test", config, str(checkpoint), "--work-dir", str(work), "--cfg-options", *options)
    return dict(config=config, work=work, options=options, checkpoint=checkpoint, stdout=test.stdout)


@pytest.mark.slow
def test_demo_train_then_test_commands_reach_real_box_ap(demo_run):
    work = demo_run["work"]
    assert json.loads((work / "randomness.json").read_text()) == dict(seed=0, deterministic=False, diff_rank_seed=False)
    # pycocotools' standard summary: AP at maxDets 100, AR at 1, 10 and 100 detections.
    assert "Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all | maxDets=100 ]" in demo_run["stdout"]
    assert "Average Recall     (AR) @[ IoU=0.50:0.95 | area=   all | maxDets=  1 ]" in demo_run["stdout"]
    metrics = json.loads((work / "results.metrics.json").read_text())
    assert len(metrics) == 12
    assert metrics["coco/bbox_AP"] > DEMO_AP_FLOOR, metrics
    detections = json.loads((work / "results.bbox.json").read_text())
    assert detections and {"image_id", "bbox", "score", "category_id"} <= set(detections[0])


@pytest.mark.slow
def test_test_command_evaluates_a_released_layout_checkpoint_the_same(demo_run, tmp_path):
    ckpt = load_from_local(str(demo_run["checkpoint"]))
    state = {("backbone." + k[len("backbone.body."):] if k.startswith("backbone.body.") else k): v
             for k, v in ckpt["state_dict"].items()}
    state |= {"backbone.fc.weight": torch.zeros(1000, 512), "backbone.fc.bias": torch.zeros(1000)}  # released keep it
    released = tmp_path / "released.pth"
    torch.save({"meta": {"mmdet_version": "2.11.0"}, "state_dict": state}, released)
    _command("detection.test", demo_run["config"], str(released), "--work-dir", str(demo_run["work"]),
             "--out", str(tmp_path / "released"), "--cfg-options", *demo_run["options"])
    ours = json.loads((demo_run["work"] / "results.metrics.json").read_text())
    assert json.loads((tmp_path / "released.metrics.json").read_text()) == ours
    assert (tmp_path / "released.bbox.json").read_text() == (demo_run["work"] / "results.bbox.json").read_text()


@pytest.mark.slow
def test_no_box_on_the_whole_test_set_reports_ap_0_and_a_warning(demo_run, tmp_path):
    test = _command("detection.test", demo_run["config"], str(demo_run["checkpoint"]), "--work-dir", str(tmp_path),
                    "--out", str(tmp_path / "none"),
                    "--cfg-options", *demo_run["options"], "model.test_cfg.rcnn.score_thr=1.01")
    metrics = json.loads((tmp_path / "none.metrics.json").read_text())
    assert metrics["coco/bbox_AP"] == 0.0 and metrics["coco/bbox_AR_100"] == 0.0
    warning = metrics["coco/warning"]
    assert warning.startswith("the detector output no boxes on any of the 50 test images, so AP and AR are 0")
    assert f"warning: {warning}\n" in test.stdout
