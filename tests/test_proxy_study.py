"""scripts/proxy_study.sh, the proxy study's one command, in a tiny mode: one seed, two models, two steps each."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import yaml

from conftest import REPO, TINY
from test_report import tables


@pytest.mark.slow
def test_proxy_study_trains_each_model_with_the_demo_schedule_and_writes_the_grouped_report(cache_dir, tmp_path):
    out = tmp_path / "study"
    shrink = [a for a in TINY if a != "model=resnet18"] + [
        "trainer.epochs=1", "trainer.limit_train_batches=2", "trainer.limit_val_batches=1", f"paths.cache_dir={cache_dir}"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "WANDB_MODE": "disabled", "PYTHON": sys.executable, "SEEDS": "0",
           "MODELS": "resnet18,dyconv_resnet18"}
    proc = subprocess.run(["bash", str(REPO / "scripts" / "proxy_study.sh"), str(out), *shrink], env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr

    md = (out / "report" / "results.md").read_text()
    groups = tables(md)["Configurations (mean ± std over seeds)"]
    assert sorted(g["Configuration"].split()[0] for g in groups) == ["dyconv_resnet18", "static_resnet18"], md
    assert [g["n"] for g in groups] == ["1", "1"] and all(g["Top-1"] != "—" for g in groups), md
    assert {r["Run"].split()[0] for r in tables(md)["Runs"]} == {"dyconv_resnet18", "static_resnet18"}
    page = (out / "report" / "results.html").read_text()
    assert 'alt="top-1 per configuration, mean and std over seeds"' in page

    # Every run took the demo's temperature schedule, not the one its model option carries (the paper's 10 epochs).
    demo = yaml.safe_load((REPO / "configs" / "model" / "demo.yaml").read_text())
    configs = [yaml.safe_load(p.read_text()) for p in sorted(out.glob("*/config.yaml"))]
    assert sorted(c["model"]["name"] for c in configs) == ["dyconv_resnet18", "static_resnet18"]
    for c in configs:
        assert c["model"]["temperature_init"] == demo["temperature_init"]
        assert c["model"]["temperature_epochs"] == demo["temperature_epochs"]
        assert c["run_name"] == "proxy_study" and c["trainer"]["seed"] == 0
