"""Config composition, the published recipes, and what a user sees for a config mistake."""
from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import torch
import yaml
from omegaconf import OmegaConf

from conftest import CONFIGS, REPO, compose_cfg, run_train
from train.builders import build_model, data_defaults, model_kwargs
from train.config import ConfigError, TrainConfig, lr_for, validate

# ODConv's paper rows and comparisons; KernelWarehouse's rows (kw_*) have their own recipes, tested below.
EXPERIMENTS = sorted(p.stem for p in (CONFIGS / "experiment").glob("*.yaml") if not p.stem.startswith("kw_"))
KW_EXPERIMENTS = sorted(p.stem for p in (CONFIGS / "experiment").glob("kw_*.yaml"))
DCD_EXPERIMENTS = ["dcd_mobilenetv2_100", "dcd_resnet50"]  # DCD's own released recipes, tested on their own
MODELS = sorted(p.stem for p in (CONFIGS / "model").glob("*.yaml"))


def _table_row_name(arch: str, kernel_num: int) -> str:
    return f"{arch}{'' if kernel_num == 0 else '_od' if kernel_num == 1 else f'_od{kernel_num}x'}"


def test_one_experiment_per_published_row():
    from models.published import PAPER_ROWS

    rows = {_table_row_name(arch, k) for arch, k in PAPER_ROWS}
    assert rows <= set(EXPERIMENTS)
    others = set(EXPERIMENTS) - rows  # the ablations and the other dynamic convolutions, each named for its row
    assert all(n.startswith(("ablation_resnet18_", "condconv_", "dyconv_", "dcd_")) for n in others), sorted(others)
    assert {n for n in others if not n.startswith("ablation_")} == {
        f"{kind}_{arch}" for kind in ("condconv", "dyconv") for arch in ("resnet18", "resnet50", "mobilenetv2_100")
    } | set(DCD_EXPERIMENTS)  # DCD: the two released recipes


def _experiment_file(name: str) -> tuple[str, str, dict]:
    """The comment, the model option and the model keys an experiment file sets."""
    text = (CONFIGS / "experiment" / f"{name}.yaml").read_text()
    return text, yaml.safe_load(text)["defaults"][0]["override /model"], yaml.safe_load(text).get("model", {})


@pytest.mark.parametrize("name", [e for e in EXPERIMENTS if e not in DCD_EXPERIMENTS])
def test_experiment_composes_with_released_recipe(name):
    """Every experiment file: its recipe composes with the paper's settings, its comment names its row, and it
    changes exactly the model keys it lists on top of its model option."""
    from models.published import paper_row

    c = validate(compose_cfg([f"experiment={name}"]))
    text, model_option, model_keys = _experiment_file(name)
    assert c.run_name == name  # runs/<experiment>/<timestamp>
    assert text.splitlines()[1].startswith(("# Paper ImageNet table row: ", "# Paper comparison row: ", "# Ablation, "))
    if text.splitlines()[1].startswith("# Paper ImageNet"):
        assert paper_row(c.model.name, c.model.kernel_num) is not None, f"{name} is not a row of the paper's table"
    assert (c.data.format, c.data.img_size, c.data.global_batch_size) == ("folder", 224, 256)
    assert data_defaults(c)["crop_pct"] == 0.875  # the model's pretrained_cfg: resize 256, crop 224
    assert (c.optim.name, c.optim.momentum, c.data.label_smoothing, c.sched.warmup_epochs) == ("sgd", 0.9, 0.0, 0)
    assert c.model.dropout is None  # the builder decides: the README's 0.2 with 4 or more kernels, else 0.1
    assert _built_dropout(c) == (0.2 if (c.model.num_experts or c.model.kernel_num or 0) >= 4 else 0.1)
    if c.model.name.startswith(("od_", "dyconv_")) and "temperature_epochs" not in model_keys:
        assert (c.model.temperature_init, c.model.temperature_epochs) == (30.0, 10.0)
    if "resnet" in c.model.name:
        assert (c.trainer.epochs, lr_for(c), c.optim.weight_decay) == (100, 0.1, 1e-4)
        assert (c.sched.name, list(c.sched.milestones), c.sched.decay_rate) == ("multistep", [30, 60, 90], 0.1)
    else:
        assert (c.trainer.epochs, lr_for(c), c.optim.weight_decay) == (150, 0.05, 4e-5)
        assert (c.sched.name, c.sched.per_iteration) == ("cosine", True)
    plain = validate(compose_cfg([f"model={model_option}"])).model
    changed = {k for k in vars(plain) if k != "dropout" and getattr(plain, k) != getattr(c.model, k)}
    assert changed == set(model_keys), f"{name} changes {sorted(changed)}"


@pytest.mark.parametrize("name", DCD_EXPERIMENTS)
def test_dcd_experiment_composes_with_the_released_dcd_recipe(name):
    """The released DCD commands (github.com/liyunsheng13/dcd README, main.py): ResNet50 120 epochs, lr 0.1 at batch
    256, wd 1e-4, x0.1 at 30/60/90, dropout 0.1; MobileNetV2 300 epochs cosine per iteration, lr 0.1 at batch 512, wd
    2e-5, dropout 0.2; both SGD momentum 0.9 without Nesterov, every parameter decayed, no warmup, label smoothing
    0.1, mixup 0.2, crop + flip, eval resize 256 / crop 224."""
    c = validate(compose_cfg([f"experiment={name}"]))
    text, model_option, model_keys = _experiment_file(name)
    assert c.run_name == name == c.model.name and model_option == name and model_keys == {}
    assert text.splitlines()[1].startswith("# Released DCD recipe: ")
    assert (c.data.format, c.data.img_size, data_defaults(c)["crop_pct"], c.data.hflip) == ("folder", 224, 0.875, 0.5)
    assert (c.optim.name, c.optim.momentum, c.optim.nesterov, c.optim.wd_exclude_norm_bias) == ("sgd", 0.9, False, False)
    assert (c.data.label_smoothing, c.data.mixup, c.data.cutmix, c.sched.warmup_epochs) == (0.1, 0.2, 0.0, 0)
    assert c.data.mixup_ramp_epochs == 100  # main.py: alpha x epoch / 100 over the first 100 epochs
    assert c.model.dropout is None
    if "resnet" in name:
        assert (c.trainer.epochs, c.data.global_batch_size, lr_for(c), c.optim.weight_decay) == (120, 256, 0.1, 1e-4)
        assert (c.sched.name, list(c.sched.milestones), c.sched.decay_rate, c.sched.per_iteration) == (
            "multistep", [30, 60, 90], 0.1, False)
        assert _built_dropout(c) == 0.1
    else:
        assert (c.trainer.epochs, c.data.global_batch_size, lr_for(c), c.optim.weight_decay) == (300, 512, 0.1, 2e-5)
        assert (c.sched.name, c.sched.per_iteration, c.sched.min_lr) == ("cosine", True, 0.0)
        assert _built_dropout(c) == 0.2


def _built_dropout(c: TrainConfig) -> float:
    return _dropout_of(c.model.name, json.dumps(model_kwargs(c.model, 10), sort_keys=True))


@functools.lru_cache(maxsize=None)  # two tests build each experiment's model
def _dropout_of(name: str, kwargs: str) -> float:
    import timm

    with torch.device("meta"):  # the structure only: no memory, no initialisation cost
        model = timm.create_model(name, **json.loads(kwargs))
    [p] = [m.p for m in model.modules() if isinstance(m, torch.nn.Dropout)]
    return p


BEFORE_RECIPES = yaml.safe_load((REPO / "tests" / "fixtures" / "composed_experiments.yaml").read_text())


@pytest.mark.parametrize("name", sorted(BEFORE_RECIPES))
def test_experiments_compose_to_the_configs_they_had_before_the_recipe_group(name):
    """Since the recipe group, the experiment files name a model and a recipe; the run they describe must not change.
    Three kinds of key moved on purpose and are compared by the value the run uses: the dropout is the builder's and mean/std/crop_pct
    the model's pretrained_cfg (null in the config), and static models no longer carry ODConv's reduction (never
    passed)."""
    before = BEFORE_RECIPES[name]
    composed = compose_cfg([f"experiment={name}"])
    after = OmegaConf.to_container(composed)
    c = validate(composed)
    in_effect = data_defaults(c)
    for key in ("mean", "std", "crop_pct"):
        assert after["data"][key] is None, f"data.{key} must come from the model"
        after["data"][key] = list(in_effect[key]) if key != "crop_pct" else in_effect[key]
    assert after["model"]["dropout"] is None, "model.dropout must come from the builder"
    after["model"]["dropout"] = _built_dropout(c)
    if c.model.name.startswith("static_"):
        assert after["model"]["reduction"] is None
        after["model"]["reduction"] = before["model"]["reduction"]
    defaults = OmegaConf.to_container(OmegaConf.structured(TrainConfig))
    for group, keys in after.items():  # keys added since (new ablation switches): unset, at the schema's default
        for key in set(keys) - set(before[group]) if isinstance(keys, dict) else ():
            assert keys.pop(key) == defaults[group][key], f"{group}.{key}"
    assert after == before


MODEL_OPTION_TAKES = {
    "od_": "it takes kernel_num, reduction, min_channel, attentions, spatial_act, attention_norm, dynamic_stages",
    "condconv_": "it takes num_experts, dynamic_stages",
    "dyconv_": "it takes kernel_num, reduction, dynamic_stages",
    "kw_": "it takes kw_ratio",
    "static_": "it takes none of the dynamic-convolution keys",
    "dcd_": "it takes none of the dynamic-convolution keys",
    "fd_": "it takes kernel_num",
}


@pytest.mark.parametrize("name", MODELS)
def test_model_options_validate(name):
    """Each model option composes to the keys its file sets, and a key of another family is refused in one line that
    names the key, the model and what the model takes (written out here, not read off train/config.py's table)."""
    option = yaml.safe_load((CONFIGS / "model" / f"{name}.yaml").read_text())
    c = validate(compose_cfg([f"model={name}"]))
    assert {k: getattr(c.model, k) for k in option} == option
    family, takes = next((f, t) for f, t in MODEL_OPTION_TAKES.items() if c.model.name.startswith(f))
    foreign = "kernel_num" if family == "condconv_" else "num_experts"
    with pytest.raises(ConfigError) as e:
        validate(compose_cfg([f"model={name}", f"model.{foreign}=2"]))
    assert str(e.value) == (f"model.{foreign} does not apply to {c.model.name} ({takes}); remove it or pick another "
                            "model.name")



def test_one_kw_experiment_per_released_row():
    from models.published import KW_ROWS

    names = {f"kw_{arch}" + {0: "", 0.25: "_1d4x", 0.5: "_1d2x", 1: "", 2: "_2x", 4: "_4x"}[r] if r else
             f"kw_baseline_{arch}" for arch, r in KW_ROWS}
    assert names == set(KW_EXPERIMENTS)


# Released per-row settings (configs/*/*.json): drop path, label smoothing, mixup/cutmix.
KW_DROP_PATH = {"kw_resnet18_1d4x": 0.0, "kw_resnet18_1d2x": 0.0, "kw_baseline_resnet18": 0.0, "kw_convnext_tiny": 0.3}
KW_SMOOTHED = {"kw_mobilenetv2_100", "kw_mobilenetv2_100_4x", "kw_mobilenetv2_050_4x"}


@pytest.mark.parametrize("name", KW_EXPERIMENTS)
def test_kw_experiment_composes_with_the_released_recipe(name):
    from models.published import KW_ROWS

    c = validate(compose_cfg([f"experiment={name}"]))
    assert c.run_name == name
    resnet = "resnet" in name or "convnext" in name  # the ConvNeXt-style AdamW recipe
    ratio = c.model.kw_ratio or 0
    assert (c.model.name.removeprefix("kw_").removeprefix("static_"), ratio) in KW_ROWS
    assert (c.data.format, c.data.img_size) == ("folder", 224) and _built_dropout(c) == 0.0
    if c.model.name.startswith("kw_"):
        assert (c.model.temperature_init, c.model.temperature_end) == (1.0, 0.0)
        assert c.model.temperature_epochs == (20 if resnet else 15)
    if resnet:
        assert (c.trainer.epochs, c.optim.name, lr_for(c), c.optim.weight_decay) == (300, "adamw", 4e-3, 0.05)
        assert (c.data.global_batch_size, c.sched.name, c.sched.warmup_epochs, c.sched.min_lr) == (4096, "cosine", 20,
                                                                                                   1e-6)
        assert (c.data.auto_augment, c.data.reprob, c.data.label_smoothing) == ("rand-m9-mstd0.5-inc1", 0.25, 0.1)
        assert (c.data.mixup, c.data.cutmix) == ((0.0, 0.0) if name == "kw_resnet18_1d4x" else (0.8, 1.0))
        assert c.model.drop_path_rate == KW_DROP_PATH.get(name, 0.1)
        # the released ConvNeXt configs add the weight EMA (model_ema, decay 0.9999, evaluated every epoch)
        assert (c.trainer.ema, c.trainer.ema_decay) == ((True, 0.9999) if "convnext" in name else (False, 0.9998))
    else:
        assert (c.trainer.epochs, c.optim.name, c.optim.nesterov, lr_for(c), c.optim.weight_decay) == (
            150, "sgd", True, 0.05, 4e-5)
        assert (c.sched.name, c.sched.warmup_epochs, c.data.mixup, c.data.auto_augment) == ("cosine", 0, 0.0, None)
        assert c.data.label_smoothing == (0.1 if name in KW_SMOOTHED else 0.0)
    assert c.optim.wd_exclude_norm_bias


def test_only_the_model_keys_a_config_sets_reach_the_builder():
    c = validate(compose_cfg(["model=resnet18_od"]))
    assert model_kwargs(c.model, 10) == dict(num_classes=10, kernel_num=1, reduction=0.0625)
    c = validate(compose_cfg(["model=resnet18_od4x", "model.attentions=[kernel,spatial]", "model.dynamic_stages=[4]",
                              "model.spatial_act=softmax", "model.dropout=0.3"]))
    assert model_kwargs(c.model, 10) == dict(num_classes=10, kernel_num=4, reduction=0.0625, attentions=("kernel", "spatial"),
                                             dynamic_stages=(4,), spatial_act="softmax", drop_rate=0.3)
    assert model_kwargs(validate(compose_cfg(["model=resnet18"])).model, 10) == dict(num_classes=10)


@pytest.mark.parametrize("option", ["mobilenetv2_100_od", "resnet18_od", "resnet18"])
def test_dropout_and_input_statistics_have_one_source(option):
    """One source per default: unset in the model config, the dropout is the builder's; unset in the data config,
    mean/std/crop_pct are the model's pretrained_cfg. The demo data keeps its own crop_pct (its images are 32x32 already)."""
    import timm
    from timm.data import resolve_model_data_config

    c = validate(compose_cfg([f"model={option}", "data=imagenet"]))
    assert c.model.dropout is None and c.data.mean is c.data.std is c.data.crop_pct is None
    built, reference = build_model(c, 10), timm.create_model(c.model.name, num_classes=10)
    dropout = [m.p for m in built.modules() if isinstance(m, torch.nn.Dropout)]
    assert dropout == [m.p for m in reference.modules() if isinstance(m, torch.nn.Dropout)] and len(dropout) == 1
    expected = resolve_model_data_config(reference)
    assert data_defaults(c) == dict(mean=expected["mean"], std=expected["std"], crop_pct=expected["crop_pct"])
    demo = validate(compose_cfg([f"model={option}"]))
    assert data_defaults(demo)["crop_pct"] == 1.0 and data_defaults(demo)["mean"] == expected["mean"]


def test_lr_scales_linearly_with_global_batch():
    c = validate(compose_cfg(["experiment=resnet50_od4x", "data.global_batch_size=1024"]))
    assert lr_for(c) == pytest.approx(0.4)


@pytest.mark.parametrize("override, message", [
    (["optim.lr=-0.1"], "optim.lr must be > 0, got -0.1"),
    (["trainer.epochs=0"], "trainer.epochs must be > 0, got 0"),
    (["model.name=od_resnet19"], "model.name 'od_resnet19' is not a registered model"),
    (["model=resnet50", "model.kernel_num=4"], "model.kernel_num does not apply to static_resnet50 (it takes none"),
    (["trainer.amp=fp8"], "trainer.amp must be one of ['bf16', 'fp16', 'none'], got 'fp8'"),
    (["data.global_batch_size=100", "trainer.accum_steps=3"], "data.global_batch_size=100 must be divisible"),
    (["mode=eval"], "mode=eval needs checkpoint=PATH"),
    (["model.attentions=[spatial,kernal]"], "model.attentions must be distinct names among ['spatial', 'channel', "),
    (["model=resnet18_od4x", "model.attentions=[spatial]"], "model.attentions without 'kernel' needs kernel_num 1"),
    (["model.spatial_act=tanh"], "model.spatial_act must be one of ['sigmoid', 'softmax'], got 'tanh'"),
    (["model.attention_norm=group"], "model.attention_norm must be one of ['batch', 'layer', 'none'], got 'group'"),
    (["model.dynamic_stages=[0,4]"], "model.dynamic_stages must be distinct stage numbers among [1, 2, 3, 4]"),
    (["model.num_experts=8"], "model.num_experts does not apply to od_resnet18 (it takes kernel_num, reduction,"),
    (["model.min_channel=0"], "model.min_channel must be > 0, got 0"),
    (["model.temperature_init=0.5"], "model.temperature_init must be >= 1 (1 = no temperature), got 0.5"),
    (["trainer.odconv_formulation=colums"], "trainer.odconv_formulation must be one of ['bmm', 'columns', 'feature',"),
    (["model=kw_resnet18", "model.temperature_init=30"], "model.temperature_init and temperature_end are "
     "KernelWarehouse's tau for kw_resnet18: need 0 <= end <= init <= 1, got init 30.0, end 0.0"),
    # DCD and FDConv have no attention temperature: setting one is refused, not ignored.
    (["model=dcd_resnet18", "model.temperature_init=30", "model.temperature_epochs=0"],
     "model.temperature_epochs does not apply to dcd_resnet18: it has no attention temperature; remove the "
     "temperature_* overrides"),
    (["model=fd_resnet18", "model.temperature_end=0.5"], "model.temperature_end does not apply to fd_resnet18"),
    (["model=kw_resnet18", "model.kw_ratio=3"], "model.kw_ratio must be one of [0.25, 0.5, 1, 2, 4], got 3.0"),
    (["model.temperature_shape=cosine"], "model.temperature_shape must be one of ['linear', 'reciprocal'], got "
     "'cosine'"),
    (["model=kw_resnet18", "model.temperature_shape=reciprocal"], "model.temperature_shape must be linear for "
     "kw_resnet18: its temperature is tau"),
    (["data.std=[0.2,0.2]"], "data.std must be 3 numbers > 0 (or null: the model's), got [0.2, 0.2]"),
])
def test_impossible_values_name_the_key(override, message):
    with pytest.raises(ConfigError, match="^" + __import__("re").escape(message)):
        validate(compose_cfg(override))


@pytest.mark.parametrize("args, message", [
    (["trainer.epcohs=3"], "Key 'epcohs' not in 'TrainerConfig'"),  # a typo: the schema is closed
    (["model=resnet51_od"], "Could not find 'model/resnet51_od'"),  # an unknown option
    (["trainer.epochs=["], "no viable alternative at input '['"),  # override syntax
    (["trainer.epochs=ten"], "Value 'ten' of type 'str' could not be converted to Integer"),
    (["-m", "model=resnet18,resnet51_od"], "Could not find 'model/resnet51_od'"),  # in a sweep
    (["optim.lr=-1"], "error: optim.lr must be > 0, got -1.0"),
    (["model=resnet18", "model.attentions=[kernel]"], "error: model.attentions does not apply to static_resnet18"),
    (["data=imagenet", "data.root=/nonexistent/imagenet"], "error: Dataset root /nonexistent/imagenet does not exist"),
])
@pytest.mark.slow  # one `python train.py` each (~10 s of imports on a loaded 2-core machine)
def test_config_mistakes_exit_2_with_one_message_and_no_traceback(args, message, tmp_path):
    proc = run_train(args + [f"paths.runs_root={tmp_path}", f"hydra.sweep.dir={tmp_path}/sweep"], timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    if message.startswith("error:"):  # our own checks: exactly one line
        assert proc.stderr.strip().count("\n") == 0, proc.stderr
    assert not list(Path(tmp_path).rglob("*.pt")), "no work must be done before the config is checked"


@pytest.mark.parametrize("error", ["RuntimeError('a bug in the loop')",
                                   "omegaconf.errors.ConfigKeyError('a bug that looks like a config error')"])
@pytest.mark.slow
def test_a_crash_exits_1_with_its_traceback(error, tmp_path):
    """Hydra exits with 1 for its config errors and for crashes alike; only the former become 2."""
    code = (f"import omegaconf, runpy, sys, train.loop\n"
            f"def crash(cfg):\n    raise {error}\n"
            f"train.loop.run = crash\n"
            f"sys.argv = ['train.py', 'paths.runs_root={tmp_path}']\n"
            f"runpy.run_path({str(REPO / 'train.py')!r}, run_name='__main__')\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" in proc.stderr and "a bug" in proc.stderr
