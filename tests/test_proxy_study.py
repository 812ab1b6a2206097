"""scripts/proxy_study.sh, the proxy study's one command, in a tiny mode: one seed, three models, two steps each."""
from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
import yaml

from conftest import REPO, TINY
from test_report import tables


def _study(out, cache_dir, models: str):
    shrink = [a for a in TINY if a not in ("model=resnet18", "trainer.threads=1")] + [
        "trainer.epochs=1", "trainer.limit_train_batches=2", "trainer.limit_val_batches=1", f"paths.cache_dir={cache_dir}"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "WANDB_MODE": "disabled", "PYTHON": sys.executable, "SEEDS": "0",
           "MODELS": models, "JOBS": "2"}
    return subprocess.run(["bash", str(REPO / "scripts" / "proxy_study.sh"), str(out), *shrink], env=env,
                          capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_proxy_study_trains_each_model_with_the_demo_schedule_and_writes_the_grouped_report(cache_dir, tmp_path):
    out = tmp_path / "study"
    proc = _study(out, cache_dir, "static,dyconv4x,od1x")
    assert proc.returncode == 0, proc.stdout + proc.stderr

    md = (out / "report" / "results.md").read_text()
    groups = tables(md)["Configurations (mean ± std over seeds)"]
    assert sorted(g["Configuration"].split()[0] for g in groups) == ["dyconv_resnet18", "od_resnet18",
                                                                    "static_resnet18"], md
    assert [g["n"] for g in groups] == ["1", "1", "1"] and all(g["Top-1"] != "—" for g in groups), md
    page = (out / "report" / "results.html").read_text()
    assert 'id="top1-bars"' in page  # the grouped bar chart

    # Every member with a temperature took the study's annealing (30 -> 1 linear in 1/T over the first half of the
    # demo's epochs), not the one its model option carries (the paper's 10 epochs, linear in T); the static network
    # the demo's keys, which it does not read. ODConv took the demo's attention norm; one directory per label and
    # seed, one thread each.
    demo = yaml.safe_load((REPO / "configs" / "model" / "demo.yaml").read_text())
    demo_epochs = yaml.safe_load((REPO / "configs" / "trainer" / "demo.yaml").read_text())["epochs"]
    configs = {p.parent.name: yaml.safe_load(p.read_text()) for p in out.glob("*/config.yaml")}
    assert sorted(configs) == ["dyconv4x-seed0", "od1x-seed0", "static-seed0"]
    for label, c in configs.items():
        schedule = tuple(c["model"][f"temperature_{k}"] for k in ("init", "epochs", "shape"))
        if label.startswith("static"):
            assert schedule == (demo["temperature_init"], demo["temperature_epochs"], "linear")
        else:
            assert schedule == (30.0, demo_epochs / 2, "reciprocal")
        assert c["run_name"] == "proxy_study" and c["trainer"]["seed"] == 0 and c["trainer"]["threads"] == 1
    assert configs["od1x-seed0"]["model"]["attention_norm"] == demo["attention_norm"]
    assert configs["dyconv4x-seed0"]["model"]["attention_norm"] is None  # not an argument of DyConv

    # The same command again continues the study: finished runs are not trained twice.
    first = {label: (out / label / "summary.json").read_text() for label in configs}
    again = _study(out, cache_dir, "static,dyconv4x,od1x")
    assert again.returncode == 0, again.stdout + again.stderr
    assert {label: (out / label / "summary.json").read_text() for label in configs} == first


def test_proxy_study_names_an_unknown_model_label(cache_dir, tmp_path):
    proc = _study(tmp_path / "study", cache_dir, "static,resnet18")
    assert proc.returncode == 2 and "MODELS: unknown label 'resnet18'" in proc.stderr


def stand_in_python(tmp_path):
    """(a `python` that records each train.py call's arguments as one line and runs nothing else of the study but
    Python one-liners, the file it records into)."""
    fake = tmp_path / "python"
    calls = tmp_path / "calls.txt"
    fake.write_text(f"""#!/usr/bin/env bash
case "$1" in
  */train.py) shift; echo "$*" >> {calls} ;;
  */report.py) ;;
  *) exec {sys.executable} "$@" ;;
esac
""")
    fake.chmod(0o755)
    return fake, calls


def test_proxy_study_starts_one_train_py_per_run_also_without_overrides(tmp_path):
    """With no caller overrides each job line must still be one run (xargs -L joins a line ending in a blank to
    the next one: that once made the whole study a single run). A stand-in python records each train.py call."""
    fake, calls = stand_in_python(tmp_path)
    env = {**os.environ, "PYTHON": str(fake), "SEEDS": "0,1", "MODELS": "static,od1x_bn"}
    proc = subprocess.run(["bash", str(REPO / "scripts" / "proxy_study.sh"), str(tmp_path / "study")], env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    runs = sorted(line.split()[0] for line in calls.read_text().splitlines())
    assert runs == [f"paths.run_dir={tmp_path / 'study'}/{label}-seed{seed}"
                    for label, seed in [("od1x_bn", 0), ("od1x_bn", 1), ("static", 0), ("static", 1)]]
    assert all(line.endswith(("model=resnet18", "model.attention_norm=batch")) for line in calls.read_text().splitlines())
    # Every model, static included, gets the study's recipe (lr warm-up, precise BN) in the same words.
    recipe = re.search(r'^recipe="([^"]*)"$', (REPO / "scripts" / "proxy_study.sh").read_text(), re.M).group(1)
    assert "trainer.precise_bn_batches=" in recipe and "sched.warmup_epochs=" in recipe
    assert all(f" {recipe} " in line for line in calls.read_text().splitlines())


def test_the_later_members_compose_with_their_own_temperature_or_none(tmp_path):
    """kw1x/kw4x take KernelWarehouse's tau 1 -> 0 over the first half of the demo's epochs (as the others' temperature),
    dcd and fdconv no temperature key at all (they have none, and train.py refuses one); every line composes and
    validates to the model the label names, with the study's recipe. A stand-in python records the lines."""
    from conftest import compose_cfg
    from train.config import validate

    fake, calls = stand_in_python(tmp_path)
    env = {**os.environ, "PYTHON": str(fake), "SEEDS": "0", "MODELS": "kw1x,kw4x,dcd,fdconv"}
    proc = subprocess.run(["bash", str(REPO / "scripts" / "proxy_study.sh"), str(tmp_path / "study"),
                           "trainer.odconv_dispatch=rules"], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = {line.split()[0].rsplit("/", 1)[1]: line.split() for line in calls.read_text().splitlines()}
    assert sorted(lines) == ["dcd-seed0", "fdconv-seed0", "kw1x-seed0", "kw4x-seed0"]
    expected = {"kw1x-seed0": ("kw_resnet18", 1), "kw4x-seed0": ("kw_resnet18", 4), "dcd-seed0": ("dcd_resnet18", None),
                "fdconv-seed0": ("fd_resnet18", None)}
    demo = yaml.safe_load((REPO / "configs" / "model" / "demo.yaml").read_text())
    for run, words in lines.items():
        temperature = [w for w in words if w.startswith("model.temperature")]
        c = validate(compose_cfg([w for w in words if not w.startswith("paths.")]))
        name, ratio = expected[run]
        assert c.model.name == name and c.trainer.seed == 0 and c.trainer.precise_bn_batches == 8
        assert c.sched.warmup_epochs == 2 and c.trainer.odconv_dispatch == "rules"
        if name.startswith("kw_"):
            assert temperature == ["model.temperature_epochs=6"] and c.model.kw_ratio == ratio
            assert (c.model.temperature_init, c.model.temperature_end) == (1.0, 0.0)  # the model option's tau 1 -> 0
        else:
            assert temperature == [], words
        assert f"model.temperature_init={demo['temperature_init']}" not in words
