"""Checkpoints: a run stopped mid-epoch and resumed equals a run never stopped, bit for bit (CPU); SIGTERM saves and
exits cleanly; a NaN loss stops without overwriting the last good checkpoint; mode=eval reproduces the metrics; a write
interrupted midway leaves the previous checkpoint."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import REPO, TINY, compose_cfg, run_train
from odconv import temperature_schedule
from train import atomic
from train.checkpoint import CheckpointDir, save_atomic
from train.loop import NonFiniteLossError, run

# ODConv ResNet18 with EMA and dropout: resume has to restore weights, optimizer, EMA, every RNG and the data position.
# The temperature falls 30 -> 1 linearly in 1/T over the first epoch (the proxy study's schedule).
RESUME = TINY + ["model=resnet18_od", "model.temperature_epochs=1", "model.temperature_shape=reciprocal",
                 "trainer.ema=true", "trainer.ema_decay=0.9",
                 "trainer.limit_val_batches=1"]


def load_last(run_dir: Path) -> dict:
    return torch.load(Path(run_dir) / "checkpoints" / "last.pt", weights_only=True)


def assert_same_tensors(a: dict, b: dict, what: str) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{what}[{k}] differs"


def train_records(run_dir: Path) -> list[tuple]:
    lines = (Path(run_dir) / "metrics.jsonl").read_text().splitlines()
    return [(r["step"], r["loss"], r["temperature"]) for r in map(json.loads, lines) if r["kind"] == "train"]


VAL_METRICS = ("loss", "top1", "top5", "images")


def val_records(run_dir: Path) -> list[dict]:
    """Every validation of the run (the model's, then its EMA's, at each epoch end): what was measured, not when."""
    lines = (Path(run_dir) / "metrics.jsonl").read_text().splitlines()
    return [{k: r[k] for k in ("step", "ema", *VAL_METRICS) if k in r}
            for r in map(json.loads, lines) if r["kind"] == "val"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory, cache_dir) -> Path:
    """The uninterrupted run (8 steps over 2 epochs)."""
    run_dir = tmp_path_factory.mktemp("reference")
    summary = run(compose_cfg(RESUME + [f"paths.cache_dir={cache_dir}", f"paths.run_dir={run_dir}"]))
    assert summary["status"] == "completed" and summary["step"] == 8
    logged = {step: t for step, _, t in train_records(run_dir)}
    assert logged and logged == {s: pytest.approx(temperature_schedule(s, 4, 30.0, 1, shape="reciprocal"))
                                 for s in logged}  # step s ran at the schedule's value for step s
    assert logged[max(logged)] == 1.0 and min(logged) < 4 < max(logged)
    return run_dir


def assert_equal_runs(a: Path, b: Path) -> None:
    ca, cb = load_last(a), load_last(b)
    assert (ca["epoch"], ca["batch"], ca["step"]) == (cb["epoch"], cb["batch"], cb["step"]) == (2, 0, 8)
    assert_same_tensors(ca["model"], cb["model"], "model")
    assert_same_tensors(ca["ema"], cb["ema"], "ema")
    for sa, sb in zip(ca["optimizer"]["state"].values(), cb["optimizer"]["state"].values()):
        assert torch.equal(sa["momentum_buffer"], sb["momentum_buffer"])
    assert train_records(a) == train_records(b)  # same losses and temperatures at every step, none logged twice
    assert val_records(a) == val_records(b)  # the same validation loss, top-1 and top-5 to the last bit


@pytest.mark.slow
def test_resume_mid_epoch_is_bit_exact(reference, cache_dir, tmp_path):
    run_dir = tmp_path / "run"
    common = RESUME + [f"paths.cache_dir={cache_dir}", f"paths.run_dir={run_dir}"]
    stopped = run(compose_cfg(common + ["trainer.stop_after_steps=3"]))  # step 3 of 4 in epoch 1
    assert (stopped["status"], stopped["step"]) == ("preempted", 3)
    assert (load_last(run_dir)["epoch"], load_last(run_dir)["batch"]) == (0, 3)
    # Resumed with a loader worker process (the stopped part had none): augmentation is seeded per sample.
    resumed = run(compose_cfg(common + ["data.workers=1"]))
    assert resumed["status"] == "completed"
    assert_equal_runs(reference, run_dir)
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["best.pt", "epoch_0002.pt", "last.pt"]


@pytest.mark.slow
def test_sigterm_saves_and_exits_cleanly_then_resumes_exactly(reference, cache_dir, tmp_path):
    run_dir = tmp_path / "run"
    args = RESUME + [f"paths.cache_dir={cache_dir}", f"paths.run_dir={run_dir}", "trainer.progress=true"]
    env = {"PYTHONPATH": str(REPO), "WANDB_MODE": "disabled"}
    proc = subprocess.Popen([sys.executable, str(REPO / "train.py"), *args], cwd=REPO, env={**__import__("os").environ,
                            **env}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if line.startswith("epoch 1/2 [2/4]"):  # mid-epoch, the second step done
            proc.send_signal(signal.SIGTERM)
            break
    out = "".join(lines) + proc.stdout.read()
    assert proc.wait(timeout=300) == 0, out
    assert "stopped by SIGTERM" in out and "Traceback" not in out
    ck = load_last(run_dir)
    assert ck["epoch"] == 0 and 2 <= ck["batch"] < 4
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "preempted"
    proc = run_train(args)  # the same command again: auto-resume from the run directory
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "resuming from" in proc.stdout
    assert_equal_runs(reference, run_dir)


@pytest.mark.slow
def test_eval_mode_reproduces_validation_of_our_and_released_checkpoints(reference, cache_dir, tmp_path):
    # The same weights, temperature, images and arithmetic as the run's last validation: equal to the last bit.
    *_, last_val, last_ema = val_records(reference)
    assert (last_val["step"], last_ema["step"], last_ema["ema"]) == (8, 8, True)
    expected = {k: last_val[k] for k in VAL_METRICS}
    common = RESUME + [f"paths.cache_dir={cache_dir}", "mode=eval"]
    ours = run(compose_cfg(common + [f"checkpoint={reference / 'checkpoints' / 'last.pt'}"]))
    assert ours == {"model": expected, "ema": {k: last_ema[k] for k in VAL_METRICS}}
    # The released format: {"state_dict": {"module.<key>": tensor}} from DataParallel training, evaluated at
    # temperature 1 (released checkpoints are fully trained). The run annealed over its first epoch of two, so it
    # saved and validated at temperature 1 too: the released format must give exactly the same numbers.
    ck = load_last(reference)
    assert ck["temperature"] == 1.0
    released = tmp_path / "released.pth.tar"
    torch.save({"state_dict": {f"module.{k}": v for k, v in ck["model"].items()}}, released)
    assert run(compose_cfg(common + [f"checkpoint={released}"])) == {"model": expected}


@pytest.mark.slow
def test_nan_loss_stops_and_keeps_last_good_checkpoint(cache_dir, tmp_path):
    run_dir = tmp_path / "run"
    cfg = compose_cfg(TINY + [f"paths.cache_dir={cache_dir}", f"paths.run_dir={run_dir}", "optim.lr=1e30",
                              "trainer.save_every_steps=1"])
    with pytest.raises(NonFiniteLossError, match=r"^loss is (nan|inf) at epoch \d step (\d+); stopped without saving"):
        run(cfg)
    ck = load_last(run_dir)
    assert all(torch.isfinite(t).all() for t in ck["model"].values() if t.is_floating_point())
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "failed" and ck["step"] == summary["step"]


def test_a_run_without_checkpoint_in_a_used_directory_sets_the_old_records_aside(reference, cache_dir, tmp_path):
    """The run directory of a finished run whose checkpoints were deleted: the same command trains afresh, and
    metrics.jsonl holds that run's records only; the old ones are kept beside it, not appended to."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    old = (Path(reference) / "metrics.jsonl").read_text()
    (run_dir / "metrics.jsonl").write_text(old)
    summary = run(compose_cfg(RESUME + [f"paths.cache_dir={cache_dir}", f"paths.run_dir={run_dir}"]))
    assert summary["status"] == "completed" and summary["step"] == 8
    assert (run_dir / "metrics.jsonl.1").read_text() == old
    assert val_records(run_dir) == val_records(reference)  # one run's records, equal to the same run's


class Interrupt:
    """Pickling it raises, as a second signal arriving in the middle of torch.save would."""

    def __reduce__(self):
        raise KeyboardInterrupt


def test_a_checkpoint_write_interrupted_midway_leaves_the_previous_file(tmp_path):
    path = tmp_path / "checkpoints" / "last.pt"
    save_atomic({"step": 1, "w": torch.ones(1000)}, path)
    with pytest.raises(KeyboardInterrupt):
        save_atomic({"step": 2, "w": torch.zeros(1000), "later": Interrupt()}, path)
    assert load_last(tmp_path)["step"] == 1 and torch.equal(load_last(tmp_path)["w"], torch.ones(1000))
    assert [p.name for p in path.parent.iterdir()] == ["last.pt"]  # no temporary file left behind
    save_atomic({"step": 3}, path)
    assert load_last(tmp_path) == {"step": 3}


def test_best_and_epoch_checkpoints_share_the_bytes_of_last_and_keep_them_when_last_moves_on(tmp_path):
    ckpts = CheckpointDir(tmp_path, keep_last=1)
    ckpts.save({"epoch": 1, "w": torch.ones(1000)}, epoch_end=True, is_best=True)
    names = sorted(p.name for p in ckpts.dir.iterdir())
    assert names == ["best.pt", "epoch_0001.pt", "last.pt"]
    assert {(ckpts.dir / n).stat().st_ino for n in names} == {ckpts.last.stat().st_ino}  # one file, three names
    ckpts.save({"epoch": 2, "w": torch.zeros(1000)}, epoch_end=True, is_best=False)
    assert sorted(p.name for p in ckpts.dir.iterdir()) == ["best.pt", "epoch_0002.pt", "last.pt"]  # keep_last=1
    assert torch.equal(torch.load(ckpts.best, weights_only=True)["w"], torch.ones(1000))  # best stayed at epoch 1
    assert torch.load(ckpts.dir / "epoch_0002.pt", weights_only=True)["epoch"] == 2
    assert ckpts.best.stat().st_nlink == 1 and ckpts.last.stat().st_nlink == 2


def test_without_hard_links_the_checkpoint_is_copied_whole(tmp_path, monkeypatch):
    def no_links(src, dst):
        raise OSError(1, "Operation not permitted")
    monkeypatch.setattr(atomic.os, "link", no_links)
    ckpts = CheckpointDir(tmp_path, keep_last=2)
    ckpts.save({"epoch": 1, "w": torch.arange(1000.0)}, epoch_end=True, is_best=True)
    for name in ("best.pt", "epoch_0001.pt"):
        path = ckpts.dir / name
        assert path.stat().st_nlink == 1 and path.read_bytes() == ckpts.last.read_bytes()
    assert sorted(p.name for p in ckpts.dir.iterdir()) == ["best.pt", "epoch_0001.pt", "last.pt"]  # no temp files
