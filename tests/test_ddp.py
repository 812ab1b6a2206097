"""DDP on CPU through real torchrun (gloo): two processes train the same weights as one with the same global batch,
and distributed evaluation counts every validation image exactly once."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from conftest import TINY, run_train

# A model without batch statistics: BatchNorm frozen (trainer.freeze_bn), including ODConv's attention BatchNorm, so
# no layer depends on how the global batch is split (SyncBN would do that on CUDA; torch has no CPU SyncBN). Dropout
# is off because its masks are drawn per rank. What remains different is the order of floating-point sums, hence
# allclose and not equal.
DDP = TINY + ["model=resnet18_od", "trainer.freeze_bn=true", "model.dropout=0", "trainer.epochs=1",
              "trainer.limit_train_batches=3"]


def val_record(run_dir: Path) -> dict:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in records if r["kind"] == "val"][-1]


@pytest.mark.slow
def test_two_processes_equal_one_process_with_the_same_global_batch(cache_dir, tmp_path):
    common = DDP + [f"paths.cache_dir={cache_dir}"]
    one = tmp_path / "one"
    p1 = run_train(common + [f"paths.run_dir={one}"])
    assert p1.returncode == 0, p1.stderr
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    # No run directory given: rank 0 picks runs/<run_name>/<timestamp> and tells rank 1; started in an empty
    # working directory to see that neither Hydra nor a rank writes anything else.
    work = tmp_path / "work"
    work.mkdir()
    p2 = run_train(common + ["paths.runs_root=runs", "run_name=ddp"], launcher=torchrun, cwd=work)
    assert p2.returncode == 0, p2.stdout + p2.stderr
    assert "2 process(es) on cpu" in p2.stdout
    (two,) = (work / "runs" / "ddp").iterdir()
    assert [p.name for p in work.iterdir()] == ["runs"] and [p.name for p in (work / "runs").iterdir()] == ["ddp"]

    w1 = torch.load(one / "checkpoints" / "last.pt", weights_only=True)["model"]
    w2 = torch.load(two / "checkpoints" / "last.pt", weights_only=True)["model"]
    for k in w1:
        if w1[k].is_floating_point():
            torch.testing.assert_close(w2[k], w1[k], rtol=1e-4, atol=1e-5, msg=f"{k} differs")
    v1, v2 = val_record(one), val_record(two)
    assert v1["images"] == v2["images"] == 360  # the demo's validation split, each image once
    assert abs(v1["top1"] - v2["top1"]) <= 100 / 360 + 1e-9
