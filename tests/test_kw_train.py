"""KernelWarehouse ResNet18 (1x) trains on the demo digits with tau annealed 1 -> 0 by the training loop, and a run
stopped mid-epoch and resumed equals the run never stopped, bit for bit (CPU)."""
from __future__ import annotations

import argparse

import pytest
import torch

from conftest import TINY, compose_cfg
from test_resume import VAL_METRICS, assert_same_tensors, load_last, train_records, val_records
from train.loop import run

# tau over the first epoch (4 steps): 1 - step/4, then 0; batches of 8 keep the per-sample kernels cheap.
KW_RUN = TINY + ["model=kw_resnet18", "model.temperature_epochs=1", "data.global_batch_size=8",
                 "data.eval_batch_size=8", "trainer.limit_val_batches=1"]


@pytest.mark.slow
def test_kw_resnet18_trains_anneals_tau_and_resumes_exactly(cache_dir, tmp_path):
    ref_dir, run_dir = tmp_path / "reference", tmp_path / "run"
    summary = run(compose_cfg(KW_RUN + [f"paths.cache_dir={cache_dir}", f"paths.run_dir={ref_dir}"]))
    assert summary["status"] == "completed" and summary["step"] == 8
    records = train_records(ref_dir)
    assert [t for _, _, t in records] == [0.75, 0.5, 0.25, 0.0, 0.0, 0.0, 0.0, 0.0]  # released schedule, per step
    assert all(loss == loss and loss < 10 for _, loss, _ in records)

    common = KW_RUN + [f"paths.cache_dir={cache_dir}", f"paths.run_dir={run_dir}"]
    stopped = run(compose_cfg(common + ["trainer.stop_after_steps=3"]))
    assert (stopped["status"], stopped["step"]) == ("preempted", 3)
    assert run(compose_cfg(common))["status"] == "completed"
    a, b = load_last(ref_dir), load_last(run_dir)
    assert (a["epoch"], a["step"]) == (b["epoch"], b["step"]) == (2, 8)
    assert any(k.startswith("warehouse_manager.weights.") for k in a["model"])
    assert_same_tensors(a["model"], b["model"], "model")
    assert a["temperature"] == b["temperature"] == 0.0
    assert train_records(ref_dir) == train_records(run_dir)
    assert val_records(ref_dir) == val_records(run_dir)

    # The released training format ({"model", "optimizer", "epoch", "args"}, no tau recorded) evaluates at tau 0, as a
    # fully trained KW model: the run's last validation (tau 0 since step 4), to the last bit.
    released = tmp_path / "checkpoint-best.pth"
    torch.save({"model": {f"module.{k}": v for k, v in a["model"].items()}, "optimizer": {}, "epoch": 1,
                "args": argparse.Namespace(model="kw_resnet18", temp_epoch=20)}, released)
    *_, last_val = val_records(ref_dir)
    evaluated = run(compose_cfg(KW_RUN + [f"paths.cache_dir={cache_dir}", "mode=eval", f"checkpoint={released}"]))
    assert evaluated == {"model": {k: last_val[k] for k in VAL_METRICS}}
