"""Shared fixtures of the training-engine tests: config composition and a tiny, fast training config."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from train.config import register

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
# Seconds each test file took in a recorded run of the whole suite (`make durations`); files start longest first.
DURATIONS = REPO / "tests" / "durations.json"

# A run small enough for two CPU cores: a static ResNet18 on 16x16 digits, batches of 16, a few steps per epoch.
# Static ResNet18 has BatchNorm; tests that compare process counts turn SyncBN on (see test_ddp.py).
# One thread per process: the tests must not depend on how busy the machine's two cores are.
TINY = [
    "model=resnet18", "model.dropout=0.1", "data.img_size=16", "data.global_batch_size=16", "data.eval_batch_size=60",
    "data.workers=0", "trainer.epochs=2", "trainer.limit_train_batches=4", "trainer.log_every=1",
    "trainer.progress=false", "trainer.threads=1",
]


def compose_cfg(overrides: list[str] = ()):
    register()
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        return compose(config_name="train", overrides=list(overrides))


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    """One demo dataset for the whole session (written on first use by the data module)."""
    return tmp_path_factory.mktemp("odconv-cache")


@pytest.fixture
def tiny(cache_dir, tmp_path) -> list[str]:
    """Overrides of the tiny run, writing into this test's temporary directory."""
    return TINY + [f"paths.cache_dir={cache_dir}", f"paths.runs_root={tmp_path / 'runs'}"]


def run_train(args: list[str], *, cwd: Path = REPO, env: dict | None = None, timeout: float = 600,
              launcher: list[str] | None = None, **popen) -> subprocess.CompletedProcess:
    """`python train.py ARGS` (or `launcher ... train.py ARGS`) as a user runs it."""
    cmd = (launcher or [sys.executable]) + [str(REPO / "train.py"), *args]
    full_env = {**os.environ, "PYTHONPATH": str(REPO), "WANDB_MODE": "disabled", **(env or {})}
    return subprocess.run(cmd, cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout, **popen)


def pytest_collection_modifyitems(config, items):
    _mark_repeated_grid_cases(items)
    _longest_files_first(items)


def _mark_repeated_grid_cases(items) -> None:
    """The quick subset (`make test-fast`, `-m "not slow"`) runs every test function once per ODConv formulation:
    besides the end-to-end runs marked `slow` where they are written, every case of a parametrized grid is marked
    `slow` here but the first of each value of its `formulation` parameter (so each hand-written backward meets
    its reference in the quick suite too) or, for grids without one, the first case (experiment files, ...).
    `make test` and CI run every case."""
    seen = set()
    for item in items:
        if not hasattr(item, "callspec"):
            continue
        key = (str(item.path), item.originalname, item.callspec.params.get("formulation"))
        if key in seen:
            item.add_marker(pytest.mark.slow)
        seen.add(key)


def _file_of(nodeid: str) -> str:
    return nodeid.split("::", 1)[0]


def _longest_files_first(items) -> None:
    """Longest files first. The suite runs in pytest-xdist workers that take whole files in collection order, so
    a long end-to-end file collected last ran alone on one worker while the other sat idle (the demo training
    file: two minutes at the end of a 17-minute run). Ordering by the recorded durations is the longest-processing-
    time-first rule; files not recorded yet go last, in their usual order. Every worker sorts the same way."""
    recorded = json.loads(DURATIONS.read_text()) if DURATIONS.is_file() else {}
    position = {}
    for i, item in enumerate(items):
        position.setdefault(_file_of(item.nodeid), i)
    items.sort(key=lambda item: (-recorded.get(_file_of(item.nodeid), 0.0), position[_file_of(item.nodeid)]))


_seconds_per_file: dict[str, float] = {}


def pytest_runtest_logreport(report):
    # Set-up, call and teardown: a module fixture's training run is part of its file's time.
    _seconds_per_file[_file_of(report.nodeid)] = _seconds_per_file.get(_file_of(report.nodeid), 0.0) + report.duration


def pytest_sessionfinish(session, exitstatus):
    # Under xdist the controller receives every worker's reports, so the controller writes the whole suite's times.
    if os.environ.get("ODCONV_RECORD_DURATIONS") and _seconds_per_file and not hasattr(session.config, "workerinput"):
        times = {f: round(t, 1) for f, t in sorted(_seconds_per_file.items(), key=lambda kv: -kv[1])}
        DURATIONS.write_text(json.dumps(times, indent=0) + "\n")
