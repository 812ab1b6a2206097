"""wandb in offline mode, read back from the run's .wandb file: the run id survives resume, the runs of a sweep are
grouped by configuration and tagged with the experiment, and the summary holds the figures the report computes."""
from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest
import timm
import torch
import yaml

from conftest import TINY, compose_cfg
from models.complexity import count_macs, count_params
from train import dashboard
from train.loop import run
from wandb_records import records


@pytest.mark.slow
def test_offline_wandb_run_id_survives_resume(cache_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_SILENT", "true")
    run_dir = tmp_path / "run"
    common = TINY + [f"paths.cache_dir={cache_dir}", f"paths.run_dir={run_dir}", "logger=wandb_offline",
                     "trainer.epochs=1", "trainer.limit_train_batches=3", "trainer.limit_val_batches=1"]
    assert run(compose_cfg(common + ["trainer.stop_after_steps=1"]))["status"] == "preempted"
    run_id = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)["wandb_id"]
    assert run_id and len(list((run_dir / "wandb").glob(f"offline-run-*-{run_id}"))) == 1

    assert run(compose_cfg(common))["status"] == "completed"
    assert torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)["wandb_id"] == run_id
    runs = list((run_dir / "wandb").glob("offline-run-*"))
    assert len(runs) == 2 and all(p.name.endswith(run_id) for p in runs), runs  # two sessions, one wandb run


def _wandb_run(run_dir: Path) -> tuple[object, dict]:
    """The run record (group, job type, tags) and the final summary an offline run wrote to its .wandb file."""
    (path,) = (run_dir / "wandb").glob("offline-run-*/run-*.wandb")
    written = records(path)
    (run,) = [r.run for r in written if r.WhichOneof("record_type") == "run"]
    summary = {}
    for r in written:
        if r.WhichOneof("record_type") == "summary":
            summary.update({u.key: json.loads(u.value_json) for u in r.summary.update if u.key})
    return run, summary


@pytest.mark.slow
def test_a_sweep_is_grouped_by_configuration_and_its_summary_holds_the_reports_figures(cache_dir, tmp_path,
                                                                                      monkeypatch):
    """Two seeds of one configuration share a W&B group; another configuration (here the digits labelled as ImageNet,
    which also brings the published row into the summary) gets its own."""
    monkeypatch.setenv("WANDB_SILENT", "true")
    common = TINY + [f"paths.cache_dir={cache_dir}", "logger=wandb_offline", "logger.wandb.tags=[mine]",
                     "trainer.epochs=2", "trainer.limit_train_batches=3", "trainer.limit_val_batches=1"]
    variants = {"seed0": ["trainer.seed=0"], "seed1": ["trainer.seed=1"],
                "imagenet": ["trainer.seed=0", "data.name=imagenet"]}
    for name, extra in variants.items():
        assert run(compose_cfg(common + extra + [f"paths.run_dir={tmp_path / name}"]))["status"] == "completed"
    written = {name: _wandb_run(tmp_path / name) for name in variants}

    groups = {name: run_record.run_group for name, (run_record, _) in written.items()}
    assert groups["seed0"] == groups["seed1"] != groups["imagenet"]
    config = yaml.safe_load((tmp_path / "seed0" / "config.yaml").read_text())
    assert groups["seed0"] == dashboard.group_name(config) and groups["seed0"].startswith("static_resnet18-")
    for run_record, _ in written.values():
        assert run_record.job_type == "train" and list(run_record.tags) == ["mine", "demo"]  # demo: the run_name

    # The summary against what the run wrote to summary.json and metrics.jsonl, and MACs counted here.
    model = timm.create_model("static_resnet18", num_classes=10)
    macs = count_macs(model, (3, 16, 16))["total"] / 1e6
    for name, (_, summary) in written.items():
        on_disk = json.loads((tmp_path / name / "summary.json").read_text())
        lines = [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
        rates = [r["images_per_s"] for r in lines if r["kind"] == "train"]
        for key in ("best_top1", "best_top5", "final_top1", "final_top5", "epochs", "status"):
            assert summary[key] == on_disk[key], key
        assert summary["params_m"] == on_disk["params"] / 1e6 == count_params(model) / 1e6
        assert summary["macs_m"] == pytest.approx(macs, rel=1e-12)
        assert summary["images_per_s"] == pytest.approx(statistics.median(rates[1:]), rel=1e-12)
    _, imagenet = written["imagenet"]
    assert imagenet["paper_top1"] == 70.25  # models/published.py: ResNet18
    assert imagenet["delta_top1"] == pytest.approx(imagenet["best_top1"] - 70.25, abs=1e-12)
    assert "paper_top1" not in written["seed0"][1] and "delta_top1" not in written["seed0"][1]  # digits: no paper row
