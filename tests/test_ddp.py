"""DDP on CPU through real torchrun (gloo): two processes train the same weights as one with the same global batch,
distributed evaluation counts every validation image exactly once, and unreadable files met on different ranks are
counted and listed once."""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import torch

from conftest import TINY, run_train
from train.demo_data import prepare_demo_dataset
from train.skipped import SKIPPED_FILE

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
    # The digits as an image folder, plus two unreadable validation files that sort last (indices 360 and 361): the
    # evaluation sampler gives one to each rank, so only a count over ranks finds both.
    folder = tmp_path / "digits"
    shutil.copytree(prepare_demo_dataset(cache_dir / "digits"), folder)
    broken = [folder / "val" / "9" / "zz_a.png", folder / "val" / "9" / "zz_b.png"]
    for path in broken:
        path.write_bytes(b"not an image")
    common = DDP + ["data.format=folder", f"data.root={folder}"]
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
    assert v1["images"] == v2["images"] == 360  # the demo's validation split, each readable image once
    assert abs(v1["top1"] - v2["top1"]) <= 100 / 360 + 1e-9
    for run_dir in (one, two):
        assert json.loads((run_dir / "summary.json").read_text())["skipped_images"] == 2
        assert (run_dir / SKIPPED_FILE).read_text().splitlines() == [str(p) for p in broken]
    assert (p2.stdout + p2.stderr).count("Skipped unreadable image") == 2  # warned once per file, by rank 0 only
