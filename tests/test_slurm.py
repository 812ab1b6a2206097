"""The Slurm path (hydra-submitit-launcher) through submitit's local executor: two tasks of one job form the process
group from the job environment and share the job directory as their run directory (a requeued job re-runs in
that directory and auto-resumes from its checkpoint, as tests/test_resume.py checks for any run directory)."""
from __future__ import annotations

import json

import pytest

from conftest import TINY, run_train


@pytest.mark.slow
def test_submitit_launcher_runs_a_two_task_job(cache_dir, tmp_path):
    args = ["-m", "hydra/launcher=local", "hydra.launcher.tasks_per_node=2", "hydra.launcher.timeout_min=10",
            *TINY, "model.dropout=0", "trainer.epochs=1", "trainer.limit_train_batches=2", "trainer.limit_val_batches=1",
            f"paths.cache_dir={cache_dir}", f"paths.runs_root={tmp_path}"]
    proc = run_train(args)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    job_dirs = [p.parent for p in tmp_path.glob("multirun/*/0/summary.json")]
    assert len(job_dirs) == 1, sorted(str(p) for p in tmp_path.rglob("*"))
    job_dir = job_dirs[0]
    summary = json.loads((job_dir / "summary.json").read_text())
    assert (summary["status"], summary["step"]) == ("completed", 2)
    logs = "".join(p.read_text() for p in tmp_path.rglob(".submitit/*/*_0_log.out"))
    assert "2 process(es) on cpu" in logs
    assert (job_dir / "checkpoints" / "last.pt").is_file()
