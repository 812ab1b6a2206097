"""wandb in offline mode: the run id is kept in the checkpoint and a resumed run continues the same wandb run."""
from __future__ import annotations

import pytest
import torch

from conftest import TINY, compose_cfg
from train.loop import run


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
