"""The mmdet bridge: backbone registry and options, checkpoint loading (both detector layouts), parameter counts,
data checks, the COCO metric (no detections included), seeding, the temperature hook, a missing detection stack."""
from __future__ import annotations

import copy
import json
import os
import subprocess
import sys

import pytest
import timm
import torch
from mmengine.config import Config
from torch import nn

import detection.plugins  # noqa: F401  (registers the backbones, metric and hook)
import models
from detection.checkpoint import load_detector_checkpoint
from detection.demo_coco import make_demo_coco
from detection.runner import ConfigError, DataError, check_data, load_config
from models.complexity import count_params
import odconv
from odconv import ODConv2d, set_temperature

from mmdet.registry import MODELS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(ROOT, "configs", "mmdet")

SMALL = {  # type -> (kwargs, zoo model name, zoo kwargs)
    "OD_ResNet": (dict(depth=18, kernel_num=4), "od_resnet18", dict(kernel_num=4)),
    "StaticResNet": (dict(depth=18), "static_resnet18", {}),
    "OD_MobileNetV2": (dict(widen_factor=0.5, kernel_num=2), "od_mobilenetv2_050", dict(kernel_num=2)),
    "StaticMobileNetV2": (dict(widen_factor=0.5), "static_mobilenetv2_050", {}),
}


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory):
    return str(make_demo_coco(str(tmp_path_factory.mktemp("demo") / "coco"), num_train=8, num_val=6, size=96))


@pytest.mark.parametrize("type_name", sorted(SMALL))
def test_registry_round_trip(type_name):
    kwargs, zoo_name, _ = SMALL[type_name]
    backbone = MODELS.build(dict(type=type_name, out_indices=(1, 2, 3), **kwargs))
    assert type(backbone) is MODELS.get(type_name)
    assert backbone.model_name == zoo_name
    outs = backbone(torch.randn(2, 3, 64, 96))
    channels = [info["num_chs"] for info in backbone.body.feature_info]
    assert [tuple(o.shape) for o in outs] == [(2, channels[i], 64 // 2 ** (i + 2), 96 // 2 ** (i + 2)) for i in (1, 2, 3)]
    assert backbone.out_channels == channels[1:]
    assert not [n for n, _ in backbone.named_parameters() if n.startswith(("body.fc", "body.classifier"))]


@pytest.mark.parametrize("cfg, message", [
    (dict(type="OD_ResNet", depth=42), r"depth must be one of \(18, 34, 50, 101\), got 42"),
    (dict(type="OD_MobileNetV2", widen_factor=0.3), r"widen_factor must be one of \(0.5, 0.75, 1.0\), got 0.3"),
    (dict(type="OD_ResNet", depth=18, kernel_num=0), "kernel_num must be >= 1"),
    (dict(type="StaticResNet", depth=18, out_indices=(0, 4)), "out_indices must be distinct values"),
    (dict(type="StaticResNet", depth=18, frozen_stages=5), "frozen_stages must be"),
    (dict(type="StaticResNet", depth=18, init_cfg=dict(type="Pretrained")), "needs checkpoint="),
])
def test_bad_backbone_arguments_raise(cfg, message):
    with pytest.raises(ValueError, match=message):
        MODELS.build(cfg)


# Published detectors at 80 classes without the backbone's unused ImageNet classifier: the released
# table's 43.80 / 108.91 / 21.13 / 29.14 / 46.45 / 111.56 / 23.78 / 31.80 M include it.
PARAMS_M = {
    "faster-rcnn_r50_fpn_1x_coco.py": 41.75,
    "faster-rcnn_od4x-r50_fpn_1x_coco.py": 106.87,
    "faster-rcnn_mobilenetv2-100_fpn_1x_coco.py": 19.85,
    "faster-rcnn_od4x-mobilenetv2-100_fpn_1x_coco.py": 27.86,
    "mask-rcnn_r50_fpn_1x_coco.py": 44.40,
    "mask-rcnn_od4x-r50_fpn_1x_coco.py": 109.51,
    "mask-rcnn_mobilenetv2-100_fpn_1x_coco.py": 22.50,
    "mask-rcnn_od4x-mobilenetv2-100_fpn_1x_coco.py": 30.50,
}


@pytest.mark.parametrize("config", sorted(PARAMS_M))
def test_published_detector_parameter_counts(config):
    cfg = Config.fromfile(os.path.join(CONFIGS, config))
    assert cfg.model.roi_head.bbox_head.num_classes == 80
    detector = MODELS.build(cfg.model)  # building reads no checkpoint; init_weights() would
    assert round(count_params(detector) / 1e6, 2) == PARAMS_M[config]


def _batchnorms(module: nn.Module, attention: bool) -> list[nn.BatchNorm2d]:
    return [m for n, m in module.named_modules() if isinstance(m, nn.BatchNorm2d) and n.endswith("attention.bn") == attention]


def test_norm_eval_freezes_attention_bn_and_frozen_stages_freeze_weights():
    backbone = MODELS.build(dict(type="OD_ResNet", depth=18, kernel_num=4, frozen_stages=1, norm_eval=True)).train()
    assert _batchnorms(backbone, attention=True) and _batchnorms(backbone, attention=False)
    assert not any(bn.training for bn in backbone.modules() if isinstance(bn, nn.BatchNorm2d))
    body = backbone.body
    assert not any(p.requires_grad for m in (body.conv1, body.bn1, body.layer1) for p in m.parameters())
    assert all(p.requires_grad for m in (body.layer2, body.layer3, body.layer4) for p in m.parameters())
    # One image per GPU is common in detection: with the attention BN frozen it trains (in train mode a BN over
    # a single pooled vector cannot even run), and the unfrozen attention weights get gradients.
    sum(o.mean() for o in backbone(torch.randn(1, 3, 64, 64))).backward()
    assert body.layer2[0].conv1.attention.bn.weight.grad is not None
    assert body.layer1[0].conv1.weight.grad is None

    trainable = MODELS.build(dict(type="OD_ResNet", depth=18, kernel_num=4, frozen_stages=-1, norm_eval=False)).train()
    assert all(bn.training for bn in _batchnorms(trainable, attention=True) + _batchnorms(trainable, attention=False))
    assert all(p.requires_grad for p in trainable.parameters())


def test_attention_norm_eval_freezes_only_the_attention_bn_statistics():
    # From scratch: feature BNs learn their statistics, attention BNs stay an affine map (see detection/backbones.py).
    backbone = MODELS.build(dict(type="OD_ResNet", depth=18, kernel_num=4, frozen_stages=-1, norm_eval=False,
                                 attention_norm_eval=True)).train()
    attention, features = _batchnorms(backbone, attention=True), _batchnorms(backbone, attention=False)
    assert not any(bn.training for bn in attention) and all(bn.training for bn in features)
    sum(o.mean() for o in backbone(torch.randn(1, 3, 64, 64))).backward()  # one image: fine without batch statistics
    assert all(torch.equal(bn.running_var, torch.ones_like(bn.running_var)) for bn in attention)
    assert not all(torch.equal(bn.running_var, torch.ones_like(bn.running_var)) for bn in features)
    assert all(bn.weight.grad is not None for bn in attention)


def test_mobilenetv2_frozen_stages_follow_the_released_stem():
    backbone = MODELS.build(dict(type="OD_MobileNetV2", widen_factor=0.5, frozen_stages=0, norm_eval=False)).train()
    features = backbone.body.features
    assert not any(p.requires_grad for m in features[:2] for p in m.parameters())  # stem: stride-2 conv + first block
    assert all(p.requires_grad for p in features[2].parameters())
    assert not features[1].training and features[2].training
    stage1 = MODELS.build(dict(type="OD_MobileNetV2", widen_factor=0.5, frozen_stages=1)).train()
    assert not any(p.requires_grad for p in stage1.body.features[3].parameters())  # end of the 24-channel stage
    assert all(p.requires_grad for p in stage1.body.features[4].parameters())


def _zoo_checkpoint(tmp_path, zoo_name, zoo_kwargs, fmt):
    """A zoo classifier with non-trivial BN statistics, saved in this project's or the released format."""
    torch.manual_seed(0)
    model = timm.create_model(zoo_name, num_classes=10, **zoo_kwargs)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    state = model.state_dict()
    obj = {"model": state, "epoch": 3} if fmt == "ours" else {"state_dict": {"module." + k: v for k, v in state.items()}}
    path = tmp_path / f"{zoo_name}_{fmt}.pth"
    torch.save(obj, path)
    return model.eval(), path


@pytest.mark.parametrize("type_name, fmt", [("OD_ResNet", "ours"), ("OD_ResNet", "released"),
                                            ("OD_MobileNetV2", "ours"), ("StaticResNet", "released")])
def test_classification_checkpoint_gives_identical_stage_outputs(tmp_path, type_name, fmt):
    kwargs, zoo_name, zoo_kwargs = SMALL[type_name]
    classifier, path = _zoo_checkpoint(tmp_path, zoo_name, zoo_kwargs, fmt)
    backbone = MODELS.build(dict(type=type_name, init_cfg=dict(type="Pretrained", checkpoint=str(path)), **kwargs))
    set_temperature(backbone, 30.0)  # as at the start of ImageNet training; fine-tuning must run at 1
    backbone.init_weights()
    assert all(float(m.attention.temperature) == 1.0 for m in backbone.modules() if isinstance(m, ODConv2d))
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = classifier.forward_stages(x)
        got = backbone.eval()(x)
    assert len(got) == 4
    for e, g in zip(expected, got):
        torch.testing.assert_close(g, e, rtol=0, atol=0)


def test_checkpoint_that_does_not_fit_lists_missing_and_unexpected_keys(tmp_path):
    _, path = _zoo_checkpoint(tmp_path, "od_resnet18", dict(kernel_num=4), "ours")
    ckpt = torch.load(path, weights_only=True)
    del ckpt["model"]["layer3.0.bn1.weight"]
    ckpt["model"]["layer9.extra.weight"] = torch.zeros(1)
    torch.save(ckpt, path)
    backbone = MODELS.build(dict(type="OD_ResNet", depth=18, kernel_num=4,
                                 init_cfg=dict(type="Pretrained", checkpoint=str(path))))
    with pytest.raises(models.CheckpointMismatchError, match=r"missing keys \(1\): layer3.0.bn1.weight") as info:
        backbone.init_weights()
    assert "unexpected keys (1): layer9.extra.weight" in str(info.value)
    backbone.init_cfg["checkpoint"] = str(tmp_path / "nowhere.pth")
    with pytest.raises(FileNotFoundError, match="nowhere.pth"):
        backbone.init_weights()


def _released_layout(state: dict, classifier: dict) -> dict:
    """A detector state dict as the released ODConv detectors (mmdet 2.x backbones) lay it out: the backbone's
    modules directly under `backbone.*`, plus the ImageNet classifier those backbones keep."""
    body = "backbone.body."
    return {("backbone." + k[len(body):] if k.startswith(body) else k): v for k, v in state.items()} | classifier


@pytest.mark.parametrize("config, classifier", [
    ("demo/faster-rcnn_od4x-r18_fpn_demo.py", dict(fc=(10, 512))),
    ("demo/mask-rcnn_od4x-mobilenetv2-050_fpn_demo.py", {"classifier.1": (10, 1280)}),
])
def test_released_detector_layout_loads_as_ours_does(tmp_path, config, classifier):
    cfg = Config.fromfile(os.path.join(CONFIGS, config))
    torch.manual_seed(0)
    trained = MODELS.build(cfg.model)
    for m in trained.modules():  # statistics unlike a fresh model's, so a skipped buffer would show
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
    expected = trained.state_dict()
    head = {f"backbone.{name}.{p}": torch.randn(shape if p == "weight" else shape[:1])
            for name, shape in classifier.items() for p in ("weight", "bias")}
    released = _released_layout(expected, head)
    assert not any(k.startswith("backbone.body.") for k in released)
    assert "backbone.conv1.weight" in released or "backbone.features.0.0.weight" in released  # the stem's conv
    # mmcv 1.x's checkpoint format: meta, the state dict, the optimizer.
    path = tmp_path / "released.pth"
    torch.save({"meta": {"mmdet_version": "2.11.0", "CLASSES": tuple("0123456789")}, "state_dict": released,
                "optimizer": {"state": {}, "param_groups": []}}, path)

    for load in ("detection.test", "torch", "mmengine"):
        torch.manual_seed(1)
        fresh = MODELS.build(cfg.model)
        if load == "detection.test":  # strict: every key must fit
            load_detector_checkpoint(fresh, str(path))
        elif load == "torch":  # what a plain load_state_dict does, strict
            fresh.load_state_dict(released, strict=True)
        else:  # what mmengine's load_from / resume do
            from mmengine.runner.checkpoint import load_checkpoint
            load_checkpoint(fresh, str(path), strict=True)
        got = fresh.state_dict()
        assert got.keys() == expected.keys()
        for k, v in expected.items():
            torch.testing.assert_close(got[k], v, rtol=0, atol=0, msg=f"{load}: {k}")


def test_detector_checkpoint_that_does_not_fit_or_is_not_a_checkpoint_says_so_in_one_line(tmp_path):
    cfg = Config.fromfile(os.path.join(CONFIGS, "demo/faster-rcnn_r18_fpn_demo.py"))
    model = MODELS.build(cfg.model)
    state = model.state_dict()
    del state["backbone.body.layer2.0.bn1.weight"]
    torch.save({"state_dict": state}, tmp_path / "partial.pth")
    with pytest.raises(models.CheckpointMismatchError, match=r"missing keys \(1\): backbone.body.layer2.0.bn1.weight"):
        load_detector_checkpoint(model, str(tmp_path / "partial.pth"))
    (tmp_path / "garbage.pth").write_bytes(b"not a checkpoint at all")
    with pytest.raises(models.CheckpointMismatchError) as info:
        load_detector_checkpoint(model, str(tmp_path / "garbage.pth"))
    message = str(info.value)
    assert message.startswith(f"{tmp_path}/garbage.pth is not a readable PyTorch checkpoint")
    assert "\n" not in message and "weights_only" not in message


def _demo_cfg(root: str, config: str = "demo/faster-rcnn_od4x-r18_fpn_demo.py") -> Config:
    cfg = Config.fromfile(os.path.join(CONFIGS, config))
    for stage in ("train", "val", "test"):
        cfg[f"{stage}_dataloader"]["dataset"]["data_root"] = root + "/"
    for stage in ("val", "test"):
        cfg[f"{stage}_evaluator"]["ann_file"] = os.path.join(root, "annotations", "val.json")
    return cfg


def test_bad_data_files_are_named(demo_root, tmp_path):
    cfg = _demo_cfg(demo_root)
    check_data(cfg, ("train", "val", "test"))  # the good set passes

    cfg.train_dataloader.dataset.data_prefix.img = "no_such_dir/"
    with pytest.raises(DataError, match=f"image directory not found: {demo_root}/no_such_dir/"):
        check_data(cfg, ("train",))
    bad = tmp_path / "bad.json"
    bad.write_text('{"images": [')
    cfg = _demo_cfg(demo_root)
    cfg.val_dataloader.dataset.ann_file = str(bad)
    with pytest.raises(DataError, match=f"annotation file {bad} is not valid JSON"):
        check_data(cfg, ("val",))
    bad.write_text(json.dumps({"images": [], "categories": []}))
    with pytest.raises(DataError, match=f"annotation file {bad} is not COCO JSON: no 'annotations' list"):
        check_data(cfg, ("val",))
    cfg.val_dataloader.dataset.ann_file = "annotations/missing.json"
    with pytest.raises(DataError, match=f"annotation file not found: {demo_root}/annotations/missing.json"):
        check_data(cfg, ("val",))


@pytest.mark.slow
def test_train_command_reports_a_missing_annotation_file_in_one_line(tmp_path):
    cmd = [sys.executable, "-m", "detection.train", os.path.join(CONFIGS, "demo/faster-rcnn_r18_fpn_demo.py"),
           "--work-dir", str(tmp_path), "--cfg-options", f"train_dataloader.dataset.data_root={tmp_path}/"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip() == f"error: annotation file not found: {tmp_path}/annotations/train.json " \
                                  "(train_dataloader.dataset.ann_file)"


def _ground_truth_as_predictions(ann_file: str, shift: float = 0.0, empty: bool = False) -> list[dict]:
    from pycocotools.coco import COCO

    coco = COCO(ann_file)
    samples = []
    for img_id in coco.getImgIds():
        info = coco.imgs[img_id]
        anns = [] if empty else coco.imgToAnns[img_id]
        boxes = torch.tensor([[a["bbox"][0] + shift, a["bbox"][1], a["bbox"][0] + a["bbox"][2] + shift,
                               a["bbox"][1] + a["bbox"][3]] for a in anns]).reshape(-1, 4)
        masks = torch.stack([torch.from_numpy(coco.annToMask(a)).bool() for a in anns]) if anns else \
            torch.zeros(0, info["height"], info["width"], dtype=torch.bool)
        pred = dict(bboxes=boxes, scores=torch.ones(len(anns)), masks=masks,
                    labels=torch.tensor([a["category_id"] - 1 for a in anns], dtype=torch.long))
        samples.append(dict(img_id=img_id, ori_shape=(info["height"], info["width"]), pred_instances=pred))
    return samples


def test_coco_metric_scores_ground_truth_as_1_and_reports_12_numbers(demo_root, tmp_path):
    ann_file = os.path.join(demo_root, "annotations", "val.json")
    from mmdet.registry import METRICS

    def evaluate(samples, prefix):
        m = METRICS.build(dict(type="StandardCocoMetric", ann_file=ann_file, metric=["bbox", "segm"],
                               outfile_prefix=str(tmp_path / prefix)))
        m.dataset_meta = dict(classes=tuple(str(d) for d in range(10)))
        m.process({}, copy.deepcopy(samples))
        return m.compute_metrics(m.results)

    exact = evaluate(_ground_truth_as_predictions(ann_file), "gt")
    names = ["AP", "AP_50", "AP_75", "AP_s", "AP_m", "AP_l", "AR_1", "AR_10", "AR_100", "AR_s", "AR_m", "AR_l"]
    assert sorted(exact) == sorted(f"{t}_{n}" for t in ("bbox", "segm") for n in names)
    assert exact["bbox_AP"] == 1.0 and exact["segm_AP"] == 1.0 and exact["bbox_AR_100"] == 1.0
    assert json.load(open(tmp_path / "gt.bbox.json")) and json.load(open(tmp_path / "gt.segm.json"))
    # Boxes moved sideways by 4 px must lose AP at strict IoU: the metric measures, it does not echo.
    shifted = evaluate(_ground_truth_as_predictions(ann_file, shift=4.0), "shifted")
    assert shifted["bbox_AP"] < 0.9 and shifted["segm_AP"] == 1.0
    # No box on the whole set scores 0 (mmdet would report no AP at all), with a one-line warning.
    none = evaluate(_ground_truth_as_predictions(ann_file, empty=True), "none")
    assert set(none) == set(exact) | {"warning"}
    assert none["bbox_AP"] == 0.0 and none["segm_AP"] == 0.0 and none["bbox_AR_100"] == 0.0
    assert none["warning"].startswith("the detector output no boxes on any of the 6 test images, so AP and AR are 0")
    assert "\n" not in none["warning"]


def test_temperature_hook_anneals_every_odconv_layer_from_init_to_1():
    from types import SimpleNamespace

    from mmengine.logging import MessageHub

    from detection.hooks import ODConvTemperatureHook

    backbone = MODELS.build(dict(type="OD_ResNet", depth=18, kernel_num=4))
    layers = [m for m in backbone.modules() if isinstance(m, ODConv2d)]
    runner = SimpleNamespace(model=backbone, train_dataloader=range(10), max_epochs=4, iter=0,
                             message_hub=MessageHub.get_instance("test_temperature_hook"))
    hook = ODConvTemperatureHook(init=31.0, epochs=2)
    hook.before_train(runner)
    seen = []
    for it in range(30):  # 3 epochs of 10 iterations
        runner.iter = it
        hook.before_train_iter(runner, it % 10)
        assert len({m.temperature for m in layers}) == 1
        seen.append(layers[0].temperature)
    assert seen[0] == pytest.approx(1 + 30 * 19 / 20)  # the released schedule: linear over 2 epochs x 10 iterations
    assert all(a > b for a, b in zip(seen[:20], seen[1:20])) and seen[19:] == [1.0] * 11
    assert runner.message_hub.get_scalar("train/temperature").current() == 1.0
    with pytest.raises(ValueError, match=r"epochs \(5\) must not exceed train_cfg.max_epochs \(4\)"):
        ODConvTemperatureHook(init=30.0, epochs=5).before_train(runner)


def test_seed_given_twice_with_different_values_is_an_error():
    config = os.path.join(CONFIGS, "demo/faster-rcnn_r18_fpn_demo.py")
    assert load_config(config).randomness.seed == 0  # seeded by default
    assert load_config(config, seed=7).randomness.seed == 7
    assert load_config(config, {"randomness.seed": 3}).randomness.seed == 3
    with pytest.raises(ConfigError, match="--seed 7 and --cfg-options randomness.seed=3 disagree"):
        load_config(config, {"randomness.seed": 3}, seed=7)


@pytest.mark.slow
@pytest.mark.parametrize("command", ["detection.train", "detection.test"])
def test_missing_detection_stack_is_one_line_saying_how_to_install_it(command):
    # sys.modules[name] = None makes `import name` fail, as on a machine where the stack was never installed.
    code = f"import sys; sys.modules['mmdet'] = None; from {command} import main; main(['cfg.py', 'ckpt.pth'])"
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("error: the detection stack is not installed (mmdet: ")
    assert "bash scripts/setup_mmdet.sh .venv" in proc.stderr and "make setup-detection" in proc.stderr


@pytest.mark.parametrize("config", sorted(f for f in os.listdir(os.path.join(CONFIGS, "demo")) if "od4x" in f))
def test_odconv_demo_detectors_use_a_per_sample_attention_norm_and_anneal(config):
    """Trained from scratch on 4 images per batch, the demo's ODConv backbones normalise each attention's squeezed
    vector per sample (docs/detection.md: box AP 0.164 against 0.092 with the released BatchNorm)."""
    cfg = Config.fromfile(os.path.join(CONFIGS, "demo", config))
    backbone = MODELS.build(cfg.model).backbone
    attentions = [m for m in backbone.modules() if isinstance(m, odconv.ODAttention) and m.fc is not None]
    norms = [type(m.norm).__name__ for m in attentions]
    assert norms and set(norms) == {"GroupNorm"}, config
    assert not any(isinstance(m.bn, nn.BatchNorm2d) for m in backbone.modules() if isinstance(m, odconv.ODAttention))
    assert [h["type"] for h in cfg.custom_hooks] == ["ODConvTemperatureHook"]
