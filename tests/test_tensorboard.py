"""`logger=tensorboard`: the event files of a real tiny run, read back with TensorBoard's own reader, hold the scalars
of metrics.jsonl, the config as hyperparameters (the HParams tab) and the final metrics."""
from __future__ import annotations

import json
import shutil

import pytest
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2

from conftest import TINY, compose_cfg
from train import dashboard
from train.loop import run


def _hparams_plugin(events: EventAccumulator) -> dict[str, plugin_data_pb2.HParamsPluginData]:
    out = {}
    for tag, content in events.PluginTagToContent("hparams").items():
        data = plugin_data_pb2.HParamsPluginData()
        data.ParseFromString(content)
        out[data.WhichOneof("data")] = data
    return out


@pytest.mark.slow
def test_tensorboard_event_files_hold_scalars_hyperparameters_and_final_metrics(cache_dir, tmp_path):
    run_dir = tmp_path / "run"
    summary = run(compose_cfg(TINY + [f"paths.cache_dir={cache_dir}", f"paths.run_dir={run_dir}", "logger=tensorboard",
                                      "trainer.epochs=2", "trainer.limit_train_batches=3",
                                      "trainer.limit_val_batches=1"]))
    assert summary["status"] == "completed"
    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()

    # Every number of metrics.jsonl at its step (stored as float32), except the temperature of a static model.
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    for kind in ("train", "val"):
        written = [r for r in lines if r["kind"] == kind]
        keys = {k for r in written for k in r} - {"kind", "step", "time", "temperature"}
        for key in keys:
            scalars = events.Scalars(f"{kind}/{key}")
            assert [s.step for s in scalars] == [r["step"] for r in written], key
            assert [s.value for s in scalars] == pytest.approx([r[key] for r in written], rel=1e-6), key
    assert "train/temperature" not in events.Tags()["scalars"]  # static_resnet18 has no attention temperature

    # The config as hyperparameters, with the final metrics named in the experiment and written as scalars.
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    plugin = _hparams_plugin(events)
    hparams = plugin["session_start_info"].session_start_info.hparams
    assert hparams["model.name"].string_value == "static_resnet18"
    assert hparams["trainer.epochs"].number_value == 2 and hparams["model.dropout"].number_value == 0.1
    assert set(hparams) == set(dashboard.flatten(config))
    metric_tags = {m.name.tag for m in plugin["experiment"].experiment.metric_infos}
    assert {"summary/best_top1", "summary/final_top5", "summary/params_m", "summary/macs_m",
            "summary/images_per_s"} <= metric_tags
    final = {tag: events.Scalars(tag)[-1].value for tag in metric_tags}
    assert final["summary/best_top1"] == pytest.approx(summary["best_top1"], rel=1e-6)
    assert final["summary/params_m"] == pytest.approx(summary["params"] / 1e6, rel=1e-6)


@pytest.mark.slow
def test_a_resumed_run_writes_each_step_once(cache_dir, tmp_path):
    """A run that dies after step 5 with its last checkpoint at step 3 (the end of epoch 1) trains steps 4 and 5
    again: TensorBoard drops their first events (purge_step), so each step appears once, as in metrics.jsonl."""
    run_dir = tmp_path / "run"
    common = TINY + [f"paths.cache_dir={cache_dir}", f"paths.run_dir={run_dir}", "logger=tensorboard",
                     "trainer.epochs=2", "trainer.limit_train_batches=3", "trainer.limit_val_batches=1"]
    assert run(compose_cfg(common + ["trainer.stop_after_steps=5"]))["status"] == "preempted"
    shutil.copy(run_dir / "checkpoints" / "epoch_0001.pt", run_dir / "checkpoints" / "last.pt")  # lose steps 4-5
    assert run(compose_cfg(common))["status"] == "completed"
    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in lines if r["kind"] == "train"]
    assert [s.step for s in events.Scalars("train/loss")] == [r["step"] for r in train] == [1, 2, 3, 4, 5, 6]
    assert [s.value for s in events.Scalars("train/loss")] == pytest.approx([r["loss"] for r in train], rel=1e-6)


def test_the_console_line_shows_the_temperature_only_for_models_that_have_one(tmp_path, capsys):
    from train.runlog import RunLogger

    shown = {}
    for name in ("od_resnet18", "kw_resnet18", "static_resnet18", "dcd_resnet18", "fd_resnet18"):
        log = RunLogger(tmp_path / name, is_main=True)
        log.config = {"model": {"name": name}}
        log.train_line(epoch=0, epochs=2, batch=5, batches=22, loss=1.0, lr=0.1, temperature=26.7, images_per_s=50,
                       eta_s=60)
        shown[name] = " T 26.70 " in capsys.readouterr().out
    assert shown == {"od_resnet18": True, "kw_resnet18": True, "static_resnet18": False, "dcd_resnet18": False,
                     "fd_resnet18": False}
