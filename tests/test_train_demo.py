"""The README's first command: `python train.py` trains the demo ODConv model on the embedded digits and prints a real
validation accuracy (98.89% best top-1 at seed 0 with one thread, 98.06-99.17% over seeds 0-4; its static twin
97.78-99.17%). The floor, 95%, is below every seed measured; with the released attention BatchNorm the same schedule gave
94.4-96.9% at 10 epochs (docs/training.md)."""
from __future__ import annotations

import json
import re

import pytest

from conftest import run_train


@pytest.mark.slow
def test_default_run_learns_the_digits(cache_dir, tmp_path):
    # Only where files go changes; one thread keeps the wall time independent of other load on the machine.
    proc = run_train([f"paths.cache_dir={cache_dir}", f"paths.runs_root={tmp_path}", "trainer.threads=1"])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    final = re.search(r"^done: best top-1 ([\d.]+)% top-5 ([\d.]+)%", proc.stdout, re.M)
    assert final, proc.stdout
    assert float(final.group(1)) >= 95.0 and float(final.group(2)) >= 99.0, proc.stdout
    assert re.search(r"^epoch 1/12 \[5/22\] loss [\d.]+ lr [\d.e-]+ T [\d.]+ \d+ img/s eta \d+:\d\d:\d\d$", proc.stdout,
                     re.M), proc.stdout  # the progress line a user reads

    (run_dir,) = tmp_path.glob("demo/*")
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["model"] == "od_resnet18" and summary["kernel_num"] == 1 and summary["status"] == "completed"
    assert summary["best_top1"] == pytest.approx(float(final.group(1)), abs=0.005)
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["kind"] == "train"]
    assert {r["temperature"] for r in train} == {1.0}  # no annealing in the demo (configs/model/demo.yaml)
    assert [r["images"] for r in records if r["kind"] == "val"] == [360] * 12
    config = (run_dir / "config.yaml").read_text()
    assert "name: od_resnet18" in config and "kernel_num: 1" in config and "epochs: 12" in config
    assert "attention_norm: layer" in config  # configs/model/demo.yaml
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["best.pt", "epoch_0012.pt", "last.pt"]
