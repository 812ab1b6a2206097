"""The cluster commands of docs/cluster.md against a real Slurm (scripts/local_slurm.sh: slurmctld and two slurmd on
this machine, brought up by the `slurm_env` fixture): the documented hydra command on two nodes trains what one
process trains; a job signalled by Slurm, or reaching its time limit, saves, is requeued and ends bit-identical to a
run never stopped; a rank killed outright leaves the last checkpoint intact and a resubmission resumes from it."""
from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from conftest import REPO, TINY, run_train
from slurm_cluster import slurm_env  # noqa: F401  (the session's cluster, a fixture)
from slurm_cluster import TWO_NODES, finished_job_info, free_port, job_ids, job_info, slurm, submit, task_pid, wait_for

pytestmark = pytest.mark.slow

# A model without batch statistics (frozen BatchNorm, no dropout), as in test_ddp.py: two ranks then train what one
# process trains, up to the order of floating-point sums. 2 epochs of 6 steps leave time to signal a running job.
RUN = TINY + ["model=resnet18_od", "trainer.freeze_bn=true", "model.dropout=0", "trainer.epochs=2",
              "trainer.limit_train_batches=6", "trainer.limit_val_batches=1"]


def weights(run_dir: Path) -> dict:
    return torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)["model"]


def assert_bit_identical(run_dir: Path, reference: Path) -> None:
    got = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    want = torch.load(reference / "checkpoints" / "last.pt", weights_only=True)
    assert (got["epoch"], got["step"]) == (want["epoch"], want["step"])
    for key in want["model"]:
        assert torch.equal(got["model"][key], want["model"][key]), f"{key} differs from the run never stopped"
    for a, b in zip(got["optimizer"]["state"].values(), want["optimizer"]["state"].values()):
        assert all(torch.equal(a[k], b[k]) for k in b), "optimizer state differs from the run never stopped"


def train_records(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    return [r for r in map(json.loads, path.read_text().splitlines()) if r["kind"] == "train"]


def job_logs(sweep: Path) -> str:
    return "".join(p.read_text() for p in sorted(sweep.glob(".submitit/*/*_log.*")))


@pytest.fixture(scope="module")
def two_node_run(slurm_env, cache_dir, tmp_path_factory) -> Path:
    """The documented command, unstopped: one job, two nodes, one task on each, no GPU. Its job directory."""
    sweep = tmp_path_factory.mktemp("two-node")
    proc = run_train(TWO_NODES + RUN + [f"paths.cache_dir={cache_dir}", f"hydra.sweep.dir={sweep}"], env=slurm_env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return sweep


def test_two_nodes_form_the_process_group_and_train_what_one_process_trains(two_node_run, cache_dir, tmp_path,
                                                                            slurm_env):
    sweep = two_node_run
    [job_id] = job_ids(sweep)
    script = (sweep / ".submitit" / job_id / f"{job_id}_submission.sh").read_text()
    assert "#SBATCH --nodes=2" in script and "#SBATCH --ntasks-per-node=1" in script
    assert "gpu" not in script.lower()  # gpus_per_node=0 asks for no GPU resource at all
    info = finished_job_info(slurm_env, job_id)
    assert info["JobState"] == "COMPLETED" and info["NodeList"] == "127.0.0.[1-2]" and info["NumTasks"] == "2"
    assert "gres" not in info.get("TresPerNode", "")
    logs = job_logs(sweep)
    assert "2 process(es) on cpu" in logs
    for rank in (0, 1):  # one task on each node, ranks from the job environment
        assert f"node={rank}(2), global_rank={rank}(2)" in logs

    one = tmp_path / "one"
    p1 = run_train(RUN + [f"paths.cache_dir={cache_dir}", f"paths.run_dir={one}"])
    assert p1.returncode == 0, p1.stderr
    w1, w2 = weights(one), weights(sweep / "0")
    for k in w1:
        if w1[k].is_floating_point():
            torch.testing.assert_close(w2[k], w1[k], rtol=1e-4, atol=1e-5, msg=f"{k} differs")


def test_a_job_signalled_by_slurm_is_requeued_and_resumes_bit_identical(two_node_run, cache_dir, tmp_path,
                                                                        slurm_env):
    sweep = tmp_path / "sweep"
    job = submit(TWO_NODES + RUN + [f"paths.cache_dir={cache_dir}", f"hydra.sweep.dir={sweep}"], slurm_env)
    try:
        wait_for(lambda: train_records(sweep / "0"), 300, "the job's first training step")
        [job_id] = job_ids(sweep)
        # The signal the launcher asked Slurm to send before the time limit (`#SBATCH --signal=SIG@seconds`).
        script = (sweep / ".submitit" / job_id / f"{job_id}_submission.sh").read_text()
        signal_name = re.search(r"#SBATCH --signal=(\w+)@\d+", script).group(1)
        # Rank 0 held still while the signal travels, so it lands mid-training on any machine.
        rank0 = wait_for(lambda: task_pid(job_id, 0), 30, "rank 0's process")
        os.kill(rank0, signal.SIGSTOP)
        try:
            slurm(slurm_env, "scancel", f"--signal={signal_name}", job_id)
            time.sleep(2)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.kill(rank0, signal.SIGCONT)
        out, _ = job.communicate(timeout=300)
    finally:
        job.kill()
    assert job.returncode == 0, out[-3000:]
    info = finished_job_info(slurm_env, job_id)
    assert info["JobState"] == "COMPLETED" and int(info["Restarts"]) >= 1  # scontrol shows the requeue
    logs = job_logs(sweep)
    stopped = re.search(rf"stopped by SIG{signal_name} at epoch \d+ step (\d+); checkpoint saved", logs)
    assert stopped, logs[-3000:]
    assert re.search(rf"resuming from {re.escape(str(sweep / '0'))}/checkpoints/last.pt: .*step {stopped.group(1)}",
                     logs), logs[-3000:]
    assert_bit_identical(sweep / "0", two_node_run / "0")


def test_a_job_reaching_its_time_limit_saves_is_requeued_and_resumes_bit_identical(cache_dir, tmp_path, slurm_env):
    """The launcher's signal_delay_s=30 before the time limit, sent by slurmctld's own time-limit check. The job is
    submitted with 10 minutes; once it trains, the test holds the training process (SIGSTOP) and shortens the job's
    limit to 1 minute, as a job nearing its end: Slurm then signals it at its next check (every 30 s; "up to 60 s
    earlier than specified", says sbatch(1)), with a SIGCONT, so the signal lands mid-training on any machine. The
    requeued job gets its 10 minutes back, so it is not signalled again while it starts. One rank, with a loader
    worker, which gets the signal too."""
    run = RUN + ["data.workers=1", f"paths.cache_dir={cache_dir}"]
    sweep = tmp_path / "sweep"
    args = ["-m", "hydra/launcher=slurm", "hydra.launcher.gpus_per_node=0", "hydra.launcher.tasks_per_node=1",
            "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=null", "hydra.launcher.timeout_min=10",
            "hydra.launcher.signal_delay_s=30", "hydra.launcher.max_num_timeout=3", *run, f"hydra.sweep.dir={sweep}"]
    job = submit(args, slurm_env)
    try:
        wait_for(lambda: train_records(sweep / "0"), 300, "the job's first training step")
        [job_id] = job_ids(sweep)
        pid = wait_for(lambda: task_pid(job_id, 0), 30, "the training process")
        os.kill(pid, signal.SIGSTOP)
        try:
            slurm(slurm_env, "scontrol", "update", f"JobId={job_id}", "TimeLimit=1")
            wait_for(lambda: "stopped by SIGUSR2" in job_logs(sweep), 120, "Slurm's signal before the time limit",
                     poll=0.5)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        wait_for(lambda: job_info(slurm_env, job_id)["JobState"] == "PENDING", 60, "the requeued job")
        slurm(slurm_env, "scontrol", "update", f"JobId={job_id}", "TimeLimit=10")
        reference = tmp_path / "reference"  # the same run in one process, never stopped
        p1 = run_train(run + [f"paths.run_dir={reference}"])
        assert p1.returncode == 0, p1.stderr
        out, _ = job.communicate(timeout=300)
    finally:
        job.kill()
    assert job.returncode == 0, out[-3000:]
    info = finished_job_info(slurm_env, job_id)
    assert info["JobState"] == "COMPLETED" and int(info["Restarts"]) >= 1, info
    logs = job_logs(sweep)
    assert "this job is timed-out" in logs  # submitit's view: requeued as a time-out (max_num_timeout counts it)
    stopped = re.search(r"stopped by SIGUSR2 at epoch \d+ step (\d+); checkpoint saved", logs)
    assert stopped, logs[-3000:]
    assert re.search(rf"resuming from \S+/last.pt: .*step {stopped.group(1)}", logs), logs[-3000:]
    assert_bit_identical(sweep / "0", reference)


def test_a_rank_killed_outright_fails_the_job_and_a_resubmission_resumes(two_node_run, cache_dir, tmp_path,
                                                                         slurm_env):
    """SIGKILL of rank 1 (no handler runs): rank 0 finds its peer gone in the next all-reduce and the job fails; the
    checkpoint written before is intact, and the same command with the same sweep directory resumes from it."""
    sweep = tmp_path / "sweep"
    args = TWO_NODES + RUN + ["trainer.save_every_steps=1", f"paths.cache_dir={cache_dir}", f"hydra.sweep.dir={sweep}"]
    last = sweep / "0" / "checkpoints" / "last.pt"
    job = submit(args, slurm_env)
    try:
        wait_for(last.is_file, 300, "the job's first checkpoint")
        [job_id] = job_ids(sweep)
        rank0, rank1 = (wait_for(lambda r=r: task_pid(job_id, r), 30, f"rank {r}'s process") for r in (0, 1))
        os.kill(rank0, signal.SIGSTOP)  # hold rank 0, so the kill lands mid-training on any machine
        saved = torch.load(last, weights_only=True)
        os.kill(rank1, signal.SIGKILL)
        os.kill(rank0, signal.SIGCONT)
        info = finished_job_info(slurm_env, job_id)
    finally:
        job.kill()  # the submitter waits for rank 1's result, which never comes: without sacct it cannot know
    assert info["JobState"] == "FAILED", info
    logs = job_logs(sweep)
    assert re.search(rf"error: rank 0 of 2 stopped at epoch \d+ step \d+ by \w+: .*; the last checkpoint, "
                     rf"{re.escape(str(last))}, is intact", logs), logs[-3000:]
    kept = torch.load(last, weights_only=True)  # a complete checkpoint, as new as the one seen before the kill
    assert kept["step"] >= saved["step"] >= 1
    again = run_train(args, env=slurm_env)  # the same command, the same sweep directory
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert f"resuming from {last}: epoch {kept['epoch'] + 1}, step {kept['step']}" in job_logs(sweep)
    assert_bit_identical(sweep / "0", two_node_run / "0")


def test_a_sweep_is_one_job_array_with_its_parallelism_and_the_report_groups_its_seeds(cache_dir, tmp_path,
                                                                                       slurm_env):
    sweep = tmp_path / "sweep"
    args = ["-m", "hydra/launcher=slurm", "hydra.launcher.gpus_per_node=0", "hydra.launcher.tasks_per_node=1",
            "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=null", "hydra.launcher.timeout_min=10",
            "hydra.launcher.array_parallelism=2", *TINY, "model=resnet18,resnet18_od", "trainer.seed=0,1",
            "trainer.epochs=1", "trainer.limit_train_batches=2", "trainer.limit_val_batches=1",
            f"paths.cache_dir={cache_dir}", f"hydra.sweep.dir={sweep}"]
    proc = run_train(args, env=slurm_env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    # submitit's folders: `<array id>_<task>`, each task's logs
    folders = sorted(p.name for p in (sweep / ".submitit").iterdir() if re.fullmatch(r"\d+_\d+", p.name))
    array_ids = {name.split("_")[0] for name in folders}
    assert len(folders) == 4 and len(array_ids) == 1, folders  # one array of four tasks
    [array_id] = array_ids
    script = (sweep / ".submitit" / array_id / f"{array_id}_submission.sh").read_text()
    assert "#SBATCH --array=0-3%2" in script
    tasks = [finished_job_info(slurm_env, name) for name in folders]
    assert all(t["JobState"] == "COMPLETED" and t["ArrayJobId"] == array_id for t in tasks), tasks
    spans = [(t["StartTime"], t["EndTime"]) for t in tasks]  # ISO times sort as strings
    for start, _ in spans:  # array_parallelism: at no start were more than two tasks running
        assert sum(s <= start < e for s, e in spans) <= 2, spans

    out = tmp_path / "report"
    report = subprocess.run([sys.executable, str(REPO / "scripts" / "report.py"), str(sweep), "--out", str(out)],
                            capture_output=True, text=True, timeout=300)
    assert report.returncode == 0, report.stderr
    md = (out / "results.md").read_text()
    section = md.split("## Configurations")[1].split("\n## ")[0]
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in section.splitlines() if line.startswith("| ")]
    header, groups = rows[0], {row[0]: dict(zip(rows[0], row)) for row in rows[1:]}
    assert sorted(groups) == ["od_resnet18", "static_resnet18"], header  # the report names only what differs
    top1 = {}
    for job_dir in sweep.glob("[0-9]*"):
        name = yaml.safe_load((job_dir / "config.yaml").read_text())["model"]["name"]
        top1.setdefault(name, []).append(json.loads((job_dir / "summary.json").read_text())["best_top1"])
    for label, group in groups.items():
        seeds = top1[label.split()[0]]
        assert group["n"] == "2" and len(seeds) == 2
        assert group["Top-1"] == f"{statistics.fmean(seeds):.2f} ± {statistics.stdev(seeds):.2f}"


def test_the_plain_sbatch_script_runs_torchrun_on_two_nodes(two_node_run, cache_dir, tmp_path, slurm_env):
    """scripts/slurm/train.sbatch: srun starts a torchrun on each node, which meet on the first node (c10d); the two
    ranks train what the submitit job on two nodes trained."""
    out = tmp_path / "job.out"
    env = {**slurm_env, "PYTHON": sys.executable, "NPROC_PER_NODE": "1", "RDZV_PORT": str(free_port()),
           "PYTHONPATH": str(REPO), "WANDB_MODE": "disabled"}
    proc = subprocess.run(["sbatch", "--wait", "--nodes=2", f"--output={out}", "scripts/slurm/train.sbatch", *RUN,
                           f"paths.cache_dir={cache_dir}", f"paths.run_dir={tmp_path / 'run'}"],
                          cwd=REPO, env={**os.environ, **env}, capture_output=True, text=True, timeout=600)
    log = out.read_text() if out.is_file() else ""
    assert proc.returncode == 0, proc.stderr + log[-3000:]
    assert "2 node(s) x 1 process(es), rendezvous on 127.0.0.1:" in log and "2 process(es) on cpu" in log
    w, ref = weights(tmp_path / "run"), weights(two_node_run / "0")
    for k in ref:  # the same two ranks as the submitit job, on the same data: the same sums in the same order
        assert torch.equal(w[k], ref[k]), f"{k} differs from the submitit job"


def _detection_train(launcher: list[str], work: Path, root: Path, env: dict, *, slurm_launcher: bool):
    """The ODConv demo Faster R-CNN for one epoch on 8 images, 2 per process, no validation."""
    config = REPO / "configs" / "mmdet" / "demo" / "faster-rcnn_od4x-r18_fpn_demo.py"
    options = [f"train_dataloader.dataset.data_root={root}/", "train_dataloader.batch_size=2",
               "train_cfg.max_epochs=1", "default_hooks.checkpoint.interval=1", "custom_hooks.0.epochs=1",
               "val_cfg=None", "val_dataloader=None", "val_evaluator=None"]
    cmd = launcher + ["-m", "detection.train", str(config), "--work-dir", str(work),
                      "--launcher", "slurm" if slurm_launcher else "pytorch", "--cfg-options", *options]
    # One thread per process in both runs (torchrun sets it for several processes, srun does not): the thread count
    # picks the CPU kernels, and with them the rounding.
    return cmd, {**os.environ, "PYTHONPATH": str(REPO), "MASTER_PORT": str(free_port()), "OMP_NUM_THREADS": "1",
                 **env}


def test_detection_trains_on_two_slurm_nodes_as_under_torchrun(tmp_path, slurm_env):
    """`srun python -m detection.train ... --launcher slurm` on two nodes (the tasks meet from SLURM_* on the first
    node, CPU-only) ends with the weights a two-process torchrun run of the same config ends with."""
    from detection.demo_coco import make_demo_coco
    root = Path(make_demo_coco(str(tmp_path / "coco"), num_train=8, num_val=2))
    cmd, env = _detection_train([sys.executable, "-m", "torch.distributed.run", "--standalone",
                                 "--nproc_per_node=2"], tmp_path / "torchrun", root, {}, slurm_launcher=False)
    ref = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert ref.returncode == 0, ref.stdout[-3000:] + ref.stderr[-3000:]
    cmd, env = _detection_train([], tmp_path / "slurm", root, slurm_env, slurm_launcher=True)
    out = tmp_path / "job.out"
    wrapped = "srun " + " ".join([sys.executable, *cmd])
    proc = subprocess.run(["sbatch", "--wait", "--nodes=2", "--ntasks-per-node=1", f"--output={out}",
                           f"--wrap={wrapped}"], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    log = out.read_text() if out.is_file() else ""
    assert proc.returncode == 0, proc.stderr + log[-3000:]
    assert "Distributed launcher: slurm" in log and "GPU number: 2" in log, log[-3000:]
    got = torch.load(tmp_path / "slurm" / "epoch_1.pth", weights_only=False)["state_dict"]
    want = torch.load(tmp_path / "torchrun" / "epoch_1.pth", weights_only=False)["state_dict"]
    assert got.keys() == want.keys()
    for k in want:  # the same two ranks on the same shards: the same sums in the same order
        assert torch.equal(got[k], want[k]), f"{k} differs from the torchrun run"
