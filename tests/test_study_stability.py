"""The proxy study's K = 4 members under its recipe (lr warm-up, precise BN before each evaluation, the temperature
annealed linearly in 1/T): trained briefly with two forced ODConv formulations, which round differently, they
evaluate alike, and no epoch's validation loss explodes (eval mode with the moving averages of training gave losses
of 5-173 in the first epochs of the study, and 22-52 in this test's second epoch, against a chance level of
ln 10 = 2.3)."""
from __future__ import annotations

import json
import math
import os
import subprocess
from pathlib import Path

import pytest

from conftest import compose_cfg
from train.loop import run

REPO = Path(__file__).resolve().parents[1]


def study_line(tmp_path: Path, label: str) -> list[str]:
    """The overrides scripts/proxy_study.sh gives one label's run, recorded by a stand-in python."""
    from test_proxy_study import stand_in_python

    fake, calls = stand_in_python(tmp_path)
    env = {**os.environ, "PYTHON": str(fake), "SEEDS": "0", "MODELS": label}
    proc = subprocess.run(["bash", str(REPO / "scripts" / "proxy_study.sh"), str(tmp_path / "study")], env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return calls.read_text().split()


def scaled(study: list[str]) -> list[str]:
    """The study's recipe on a run of 2 epochs of 4 steps: warm-up, recalibration and annealing shortened with it
    (the study anneals over the first half of its 264 steps; here over all 8, as 1/T climbing from 1/30 to 1 in 4
    steps is the abrupt end the study's schedule exists to avoid: epoch-2 losses 2.93 and 2.56, 0.37 apart)."""
    keys = dict(w.split("=", 1) for w in study if "=" in w)
    assert {"sched.warmup_epochs", "trainer.precise_bn_batches"} <= set(keys), study
    assert (keys["model.temperature_init"], keys["model.temperature_shape"]) == ("30", "reciprocal"), study
    return ["sched.warmup_epochs=1", "trainer.precise_bn_batches=4", "model.temperature_init=30",
            "model.temperature_epochs=2", "model.temperature_shape=reciprocal"]


# ODConv 4x with the study's attention norm, on the digits at their native 8x8 in batches of 8 (a K = 4 ResNet18
# step costs its per-sample kernels, 8 x 44M weights, whatever the map size): 8 steps at the study's peak step size
# (0.0125), 60 validation images per epoch.
K4 = ["model=resnet18_od4x", "model.attention_norm=layer", "data.img_size=8", "data.global_batch_size=8",
      "data.eval_batch_size=60", "data.workers=0", "optim=demo", "optim.lr=0.4", "sched=cosine", "trainer.epochs=2",
      "trainer.limit_train_batches=4", "trainer.limit_val_batches=1", "trainer.progress=false", "trainer.threads=1",
      "trainer.val_bn_diagnostics=true"]


def val_records(run_dir: Path) -> list[dict]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in records if r["kind"] == "val"]


@pytest.mark.slow
def test_a_k4_member_trains_alike_under_two_formulations_and_its_validation_loss_never_explodes(cache_dir, tmp_path):
    recipe = scaled(study_line(tmp_path, "od4x"))
    curves = {}
    # The dispatch rules' choice per layer (taps on the 1x1 maps, ...), and the per-sample kernel applied to unfolded
    # patches in every layer, forced through the config key the study's second run uses.
    for name, forced in (("rules", ["trainer.odconv_dispatch=rules"]), ("columns", ["trainer.odconv_formulation=columns"])):
        run(compose_cfg(K4 + recipe + forced + [f"paths.cache_dir={cache_dir}", f"paths.run_dir={tmp_path / name}"]))
        curves[name] = val_records(tmp_path / name)
    a, b = curves["rules"], curves["columns"]
    assert len(a) == len(b) == 2
    chance = math.log(10)
    for ra, rb in zip(a, b):
        # The two runs part within the first steps: rounding differences, amplified by BatchNorm over 8 values per
        # channel on the 1x1 maps of stages 3-4, moved the mean training loss of epoch 1 by 1.5% (2.382 / 2.418).
        # Measured 0.08 and 0.04 apart (at temperature 1 throughout, before the study annealed it: 0.025 and 0.087);
        # the bound is a tenth of the chance loss, while the moving averages of such runs evaluated to losses of 22
        # and 52 in epoch 2.
        assert abs(ra["loss"] - rb["loss"]) < 0.25, (a, b)
        for r in (ra, rb):
            assert r["loss"] < 1.5 * chance, r  # recalibrated statistics: no explosion
            assert r["batch_stats_loss"] < 1.5 * chance, r  # the network itself is sane
