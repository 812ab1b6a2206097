"""Config composition, the published recipes, and what a user sees for a config mistake."""
from __future__ import annotations

from pathlib import Path

import pytest

from conftest import CONFIGS, compose_cfg, run_train
from train.config import ConfigError, lr_for, validate

EXPERIMENTS = sorted(p.stem for p in (CONFIGS / "experiment").glob("*.yaml"))
MODELS = sorted(p.stem for p in (CONFIGS / "model").glob("*.yaml"))


def test_one_experiment_per_published_row():
    from models.published import PAPER_ROWS

    rows = {f"{arch}{'' if k == 0 else '_od' if k == 1 else f'_od{k}x'}" for arch, k in PAPER_ROWS}
    assert set(EXPERIMENTS) == rows


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_composes_with_released_recipe(name):
    from models.published import paper_row

    c = validate(compose_cfg([f"experiment={name}"]))
    assert c.run_name == name  # runs/<experiment>/<timestamp>
    assert paper_row(c.model.name, c.model.kernel_num) is not None, f"{name} is not a row of the paper's table"
    assert (c.data.format, c.data.img_size, c.data.crop_pct, c.data.global_batch_size) == ("folder", 224, 0.875, 256)
    assert (c.optim.name, c.optim.momentum, c.data.label_smoothing, c.sched.warmup_epochs) == ("sgd", 0.9, 0.0, 0)
    assert c.model.dropout == (0.2 if name.endswith("4x") else 0.1)
    if c.model.kernel_num:
        assert (c.model.temperature_init, c.model.temperature_epochs) == (30.0, 10.0)
    if name.startswith("resnet"):
        assert (c.trainer.epochs, lr_for(c), c.optim.weight_decay) == (100, 0.1, 1e-4)
        assert (c.sched.name, list(c.sched.milestones), c.sched.decay_rate) == ("multistep", [30, 60, 90], 0.1)
    else:
        assert (c.trainer.epochs, lr_for(c), c.optim.weight_decay) == (150, 0.05, 4e-5)
        assert (c.sched.name, c.sched.per_iteration) == ("cosine", True)


@pytest.mark.parametrize("name", MODELS)
def test_model_options_validate(name):
    validate(compose_cfg([f"model={name}"]))


def test_lr_scales_linearly_with_global_batch():
    c = validate(compose_cfg(["experiment=resnet50_od4x", "data.global_batch_size=1024"]))
    assert lr_for(c) == pytest.approx(0.4)


@pytest.mark.parametrize("override, message", [
    (["optim.lr=-0.1"], "optim.lr must be > 0, got -0.1"),
    (["trainer.epochs=0"], "trainer.epochs must be > 0, got 0"),
    (["model.name=od_resnet19"], "model.name 'od_resnet19' is not a registered model"),
    (["model=resnet50", "model.kernel_num=4"], "model.kernel_num must be 0 for the static model static_resnet50"),
    (["trainer.amp=fp8"], "trainer.amp must be one of ['bf16', 'fp16', 'none'], got 'fp8'"),
    (["data.global_batch_size=100", "trainer.accum_steps=3"], "data.global_batch_size=100 must be divisible"),
    (["mode=eval"], "mode=eval needs checkpoint=PATH"),
])
def test_impossible_values_name_the_key(override, message):
    with pytest.raises(ConfigError, match="^" + __import__("re").escape(message)):
        validate(compose_cfg(override))


@pytest.mark.parametrize("args, message", [
    (["trainer.epcohs=3"], "Key 'epcohs' not in 'TrainerConfig'"),  # a typo: the schema is closed
    (["trainer.epochs=ten"], "Value 'ten' of type 'str' could not be converted to Integer"),
    (["optim.lr=-1"], "error: optim.lr must be > 0, got -1.0"),
    (["data=imagenet", "data.root=/nonexistent/imagenet"], "error: Dataset root /nonexistent/imagenet does not exist"),
])
def test_config_mistakes_stop_with_one_message_and_no_traceback(args, message, tmp_path):
    proc = run_train(args + [f"paths.runs_root={tmp_path}"], timeout=300)
    assert proc.returncode != 0
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    if message.startswith("error:"):  # our own checks: exactly one line
        assert proc.stderr.strip().count("\n") == 0, proc.stderr
    assert not list(Path(tmp_path).rglob("*.pt")), "no work must be done before the config is checked"


def test_slurm_launcher_config_requeues_and_signals_before_the_limit():
    from hydra import compose, initialize_config_dir

    from train.config import register

    register()
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        cfg = compose("train", overrides=["hydra/launcher=slurm", "experiment=resnet50_od4x"], return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert launcher.tasks_per_node == launcher.gpus_per_node == 8  # one training process per GPU
    assert launcher.max_num_timeout > 0 and launcher.signal_delay_s > 0  # requeue, with time to write a checkpoint
    assert cfg.hydra.output_subdir is None and not cfg.hydra.job.chdir  # no per-process directories
