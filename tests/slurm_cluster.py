"""The real two-node Slurm cluster of scripts/local_slurm.sh for the tests: brought up once per session (installing the
Debian packages when they are missing, as CI does on a fresh machine) and stopped at the session's end, also when a
test failed. Plus the small helpers the cluster tests share: the hydra command, job state from scontrol, waiting."""
from __future__ import annotations

import os
import random
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "local_slurm.sh"

# `python train.py -m` with these submits one job to the local cluster: two nodes, one task on each, no GPU.
TWO_NODES = ["-m", "hydra/launcher=slurm", "hydra.launcher.nodes=2", "hydra.launcher.tasks_per_node=1",
             "hydra.launcher.gpus_per_node=0", "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=null",
             "hydra.launcher.timeout_min=10"]


def _free_port_base() -> int:
    """Three consecutive free ports (slurmctld and the two slurmd), so a cluster the user started keeps its own."""
    for _ in range(100):
        base = random.randrange(20000, 40000)
        socks = []
        try:
            for port in range(base, base + 3):
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no three consecutive free ports found for the test cluster")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def slurm_env():
    """Environment variables that point Slurm's commands (and the jobs' submitit) at the test cluster."""
    # A short directory: munge's socket path must fit in a Unix socket address (108 bytes).
    cluster_dir = Path(tempfile.mkdtemp(prefix="odconv-slurm-"))
    env = {**os.environ, "ODCONV_SLURM_DIR": str(cluster_dir), "ODCONV_SLURM_PORT": str(_free_port_base())}
    up = subprocess.run(["bash", str(SCRIPT), "up"], env=env, capture_output=True, text=True, timeout=900)
    try:
        if up.returncode != 0 and "missing packages" in up.stderr and os.geteuid() != 0:
            pytest.skip("Slurm is not installed and installing it needs root: "
                        "sudo apt-get install slurmctld slurmd slurm-client munge")
        assert up.returncode == 0, up.stderr
        assert up.stdout.startswith("export SLURM_CONF=") and up.stdout.count("\n") == 1, up.stdout
        again = subprocess.run(["bash", str(SCRIPT), "up"], env=env, capture_output=True, text=True, timeout=60)
        assert (again.returncode, again.stdout) == (0, up.stdout), again.stderr  # reuses the running cluster
        status = subprocess.run(["bash", str(SCRIPT), "status"], env=env, capture_output=True, text=True, timeout=60)
        assert status.stdout.count(": running") == 4 and status.stdout.count(" idle") == 2, status.stdout
        yield {"SLURM_CONF": up.stdout.strip().split("=", 1)[1]}
    finally:
        down = subprocess.run(["bash", str(SCRIPT), "down"], env=env, capture_output=True, text=True, timeout=120)
        left = cluster_processes(cluster_dir)
        shutil.rmtree(cluster_dir, ignore_errors=True)
        assert down.returncode == 0, down.stderr
        assert not left, f"processes of the test cluster still running after `down`: {left}"


def cluster_processes(cluster_dir: Path) -> list[str]:
    """Daemons started with the cluster's files, and job steps started with its config (slurmstepd, tasks)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            environ = Path(f"/proc/{pid}/environ").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if str(cluster_dir) in cmdline or (f"SLURM_CONF={cluster_dir}" in environ and "SLURM_JOB_ID=" in environ):
            found.append(f"{pid} {cmdline.strip()}")
    return found


def slurm(env: dict, *args: str) -> str:
    proc = subprocess.run(list(args), env={**os.environ, **env}, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, f"{' '.join(args)}: {proc.stderr}"
    return proc.stdout


def job_info(env: dict, job_id: str) -> dict:
    """`scontrol show job` as a dict (JobState, Restarts, StartTime, EndTime, ...); finished jobs stay listed for
    MinJobAge (30 minutes on the local cluster)."""
    fields = {}
    for item in slurm(env, "scontrol", "-o", "show", "job", job_id).split():
        key, _, value = item.partition("=")
        fields.setdefault(key, value)
    return fields


def finished_job_info(env: dict, job_id: str, timeout: float = 120) -> dict:
    """scontrol's fields once the job has ended (the submitter returns when task 0 wrote its result, which may be
    a moment before Slurm has seen every task exit)."""
    return wait_for(lambda: (i := job_info(env, job_id))["JobState"] not in ("PENDING", "RUNNING", "COMPLETING",
                                                                           "REQUEUED") and i, timeout,
                    f"job {job_id} to end")


def wait_for(predicate, timeout: float, what: str, poll: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def submit(args: list[str], env: dict, cwd: Path = REPO) -> subprocess.Popen:
    """`python train.py ARGS` in the background: the hydra launcher submits and then waits for the job's result."""
    return subprocess.Popen([sys.executable, str(REPO / "train.py"), *args], cwd=cwd, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            env={**os.environ, "PYTHONPATH": str(REPO), "WANDB_MODE": "disabled", **env})


def job_ids(sweep_dir: Path) -> list[str]:
    """Slurm job ids of a sweep, from submitit's folders (`.submitit/<job id>`)."""
    return sorted((p.name for p in (sweep_dir / ".submitit").iterdir() if p.name[0].isdigit()), key=int)


def task_pid(job_id: str, rank: int) -> int | None:
    """Pid of the training process of task `rank` of a job (this machine runs every node); not srun, whose command
    line is the same, nor the process's loader workers (its children)."""
    found = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            ppid = int(re.search(r"^PPid:\s*(\d+)", Path(f"/proc/{pid}/status").read_text(), re.M).group(1))
        except (OSError, AttributeError):
            continue
        if (b"submitit.core._submit" in argv and not argv[0].endswith(b"srun")
                and f"SLURM_JOB_ID={job_id}".encode() in environ and f"SLURM_PROCID={rank}".encode() in environ):
            found[int(pid)] = ppid
    mains = [pid for pid, ppid in found.items() if ppid not in found]
    return mains[0] if len(mains) == 1 else None
