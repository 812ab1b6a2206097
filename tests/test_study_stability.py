"""The proxy study's K = 4 members under its recipe (lr warm-up, precise BN before each evaluation): trained briefly
with two forced ODConv formulations, which round differently, they evaluate alike, and no epoch's validation loss
explodes (eval mode with the moving averages of training gave losses of 5-173 in the first epochs of the study, and
22-52 in this test's second epoch, against a chance level of ln 10 = 2.3)."""
from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest

from conftest import compose_cfg
from train.loop import run

REPO = Path(__file__).resolve().parents[1]


def study_recipe() -> list[str]:
    """The overrides scripts/proxy_study.sh gives every run (its `recipe` line), read from the script itself."""
    line = re.search(r'^recipe="([^"]*)"$', (REPO / "scripts" / "proxy_study.sh").read_text(), re.M)
    assert line, "scripts/proxy_study.sh has no recipe= line"
    return line.group(1).split()


def scaled(overrides: list[str]) -> list[str]:
    """The study's recipe on a run of 2 epochs of 4 steps: warm-up and recalibration shortened with it."""
    keys = {o.split("=")[0] for o in overrides}
    assert {"sched.warmup_epochs", "trainer.precise_bn_batches"} <= keys, overrides
    return ["sched.warmup_epochs=1", "trainer.precise_bn_batches=4"]


# ODConv 4x with the study's attention norm and temperature, on the digits at their native 8x8 in batches of 8
# (a K = 4 ResNet18 step costs its per-sample kernels, 8 x 44M weights, whatever the map size): 8 steps at the
# study's peak step size (0.0125), 60 validation images per epoch.
K4 = ["model=resnet18_od4x", "model.attention_norm=layer", "model.temperature_init=30", "model.temperature_epochs=0",
      "data.img_size=8", "data.global_batch_size=8", "data.eval_batch_size=60", "data.workers=0", "optim=demo",
      "optim.lr=0.4", "sched=cosine", "trainer.epochs=2", "trainer.limit_train_batches=4",
      "trainer.limit_val_batches=1", "trainer.progress=false", "trainer.threads=1", "trainer.val_bn_diagnostics=true"]


def val_records(run_dir: Path) -> list[dict]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in records if r["kind"] == "val"]


@pytest.mark.slow
def test_a_k4_member_trains_alike_under_two_formulations_and_its_validation_loss_never_explodes(cache_dir, tmp_path):
    recipe = scaled(study_recipe())
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
        # Measured 0.025 and 0.087 apart; the bound is a tenth of the chance loss, while the moving averages of
        # the same runs evaluated to losses of 22 and 52 in epoch 2.
        assert abs(ra["loss"] - rb["loss"]) < 0.25, (a, b)
        for r in (ra, rb):
            assert r["loss"] < 1.5 * chance, r  # recalibrated statistics: no explosion
            assert r["batch_stats_loss"] < 1.5 * chance, r  # the network itself is sane
