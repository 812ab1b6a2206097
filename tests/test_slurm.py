"""Sweeps and the Slurm path. hydra-submitit-launcher through submitit's local executor: two tasks of one job form the
process group from the job environment and share the job directory as their run directory (a requeued job re-runs in
that directory and auto-resumes from its checkpoint, as tests/test_resume.py checks for any run directory). A sweep
over experiments and seeds: one job per combination, each in its own directory, locally one after another.
The same commands against a real Slurm cluster are in test_slurm_cluster.py."""
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


def test_a_sweep_of_experiments_and_seeds_composes_for_the_slurm_array():
    """`python train.py -m hydra/launcher=slurm experiment=resnet18,resnet18_od4x trainer.seed=0,1,2`: Hydra's sweeper
    makes one job per combination, submitit submits them as one Slurm array, and each job composes and validates with
    its own directory under the sweep's (the job number), where a requeued job finds its checkpoint again."""
    from hydra import compose, initialize_config_dir
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import open_dict

    from conftest import CONFIGS
    from train.config import register, validate

    sweep = OverridesParser.create().parse_overrides(["experiment=resnet18,resnet18_od4x", "trainer.seed=0,1,2"])
    [jobs] = BasicSweeper.split_arguments(sweep, max_batch_size=None)
    assert len(jobs) == 6
    register()
    dirs, seen = set(), set()
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        for num, job in enumerate(jobs):
            cfg = compose("train", overrides=["hydra/launcher=slurm", "paths.runs_root=/shared/runs", *job],
                          return_hydra_config=True)
            with open_dict(cfg):
                cfg.hydra.job.num = num  # set by the launcher in each array task
            job_dir = f"{cfg.hydra.sweep.dir}/{cfg.hydra.sweep.subdir}"
            with open_dict(cfg):
                hydra_cfg = cfg.pop("hydra")
            launcher = hydra_cfg.launcher
            assert launcher._target_.endswith("SlurmLauncher") and launcher.array_parallelism > 0
            assert launcher.tasks_per_node == launcher.gpus_per_node  # one training process per GPU
            assert launcher.max_num_timeout > 0 and launcher.signal_delay_s > 0  # requeue, time to write a checkpoint
            assert hydra_cfg.output_subdir is None and not hydra_cfg.job.chdir  # no per-process directories
            assert job_dir.startswith("/shared/runs/multirun/") and job_dir.endswith(f"/{num}")
            dirs.add(job_dir)
            c = validate(cfg)
            seen.add((c.run_name, c.trainer.seed))
    assert seen == {(e, s) for e in ("resnet18", "resnet18_od4x") for s in (0, 1, 2)}
    assert len(dirs) == 6  # one run directory per job


@pytest.mark.slow
def test_local_multirun_runs_the_jobs_one_after_another_each_in_its_own_directory(cache_dir, tmp_path):
    args = ["-m", "trainer.seed=0,1", *TINY, "trainer.epochs=1", "trainer.limit_train_batches=2",
            "trainer.limit_val_batches=1", f"paths.cache_dir={cache_dir}", f"paths.runs_root={tmp_path}"]
    proc = run_train(args)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    [sweep] = tmp_path.glob("multirun/*")
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == ["0", "1"]  # and Hydra's multirun.yaml
    for seed in (0, 1):
        job = sweep / str(seed)
        assert json.loads((job / "summary.json").read_text())["status"] == "completed"
        assert f"seed: {seed}" in (job / "config.yaml").read_text() and (job / "checkpoints" / "last.pt").is_file()
    # One after another: the second job logged its first record after the first job logged its last (its validation);
    # jobs run side by side would interleave their records.
    times = {seed: [json.loads(line)["time"] for line in (sweep / str(seed) / "metrics.jsonl").read_text().splitlines()]
             for seed in (0, 1)}
    assert times[0] == sorted(times[0]) and times[1] == sorted(times[1])
    assert max(times[0]) <= min(times[1]), times
    assert proc.stdout.count("run dir ") + proc.stderr.count("run dir ") == 2  # two jobs in one process
