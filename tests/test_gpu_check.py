"""The GPU check (scripts/gpu_check.py): without a GPU it says so and exits 0; on the CPU its quick mode runs every
section and prints one report; a failing check, a hung section and a spent time budget each show in the report and
in the exit status."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))
import gpu_check  # noqa: E402
from bench_measure import MODEL_ROWS  # noqa: E402
from odconv import FORMULATIONS  # noqa: E402


def _table(report: str, heading: str) -> list[list[str]]:
    """Rows (cells) of the markdown table of the section that starts with `heading`, header left out."""
    section = report.split(heading, 1)[1].split("\n## ", 1)[0]
    lines = [line for line in section.splitlines() if line.startswith("|")]
    return [[c.strip() for c in line.strip().strip("|").split("|")] for line in lines[2:]]


def test_without_a_gpu_the_wrapper_says_so_and_exits_0():
    proc = subprocess.run(["bash", str(REPO / "scripts" / "gpu_check.sh")], capture_output=True, text=True,
                          env={**os.environ, "CUDA_VISIBLE_DEVICES": ""}, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("# ODConv GPU check\n\nNo CUDA GPU found"), proc.stdout


@pytest.mark.slow
def test_quick_cpu_run_reports_every_section(cache_dir):
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "gpu_check.py"), "--device", "cpu", "--quick",
                           "--cache-dir", str(cache_dir)], capture_output=True, text=True, timeout=1200,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    report = proc.stdout
    assert proc.returncode == 0, report + proc.stderr
    assert report.startswith("# ODConv GPU check\n")
    assert [line for line in report.splitlines() if line.startswith("## ")] == [
        "## Formulations against the float64 reference", "## Models: training step over the static twin",
        "## Demo training: 2 steps, bf16", "## DDP: two processes, gloo, bf16", "## Summary"]

    forms = _table(report, "## Formulations")
    assert [r[0] for r in forms] == [layer[0] for layer in gpu_check.LAYERS[:3] + gpu_check.LAYERS[4:6]]
    for row in forms:
        assert len(row) == 1 + 2 * len(FORMULATIONS), row
        errors = [float(c) for c in row[1:] if c != "-"]
        assert all(e < 5e-2 for e in errors) and "FAIL" not in " ".join(row), row
        assert "-" not in row[1:3], row  # the released formulation computes every layer, the depthwise one too

    # Times are the script's to judge (a ratio outside gpu_check.RATIO_RANGE fails its section, reported in the
    # summary below); here: one complete row per model, every cell a number in the table's format.
    models = _table(report, "## Models")
    assert [(r[0], r[1], r[2]) for r in models] == [(m, str(k), "32") for m, k, _, _ in MODEL_ROWS]
    for row in models:
        assert len(row) == 12, row
        assert re.fullmatch(r"\d+\.\d", row[3]) and re.fullmatch(r"\d+", row[7]), row  # static ms, static MiB
        assert all(re.fullmatch(r"\d+\.\d\d", c) for c in row[4:7] + row[8:11]), row  # ratios, none marked FAIL
        assert re.fullmatch(r"\d+\.\d", row[11]), row  # tune s

    for heading, processes in (("## Demo", 1), ("## DDP", 2)):
        (run,) = _table(report, heading)
        assert run[:4] == ["0", "completed", f"yes ({processes} on cpu)", "2"], run
    summary = _table(report, "## Summary")
    assert [(r[0], r[1]) for r in summary] == [(s, "ok") for s in gpu_check.SECTIONS]


def test_a_broken_measurement_fails_the_models_section(monkeypatch, capsys):
    import bench_measure
    import torch

    def compare(variants, device, repeats, first_call):  # a variant whose step never ran: no time, no memory
        first_call["ours:measured"] = 0.5
        return ({"static": 0.01, "ours:rules": 0.012, "ours:measured": 0.0, "grouped": 0.02},
                {"static": 1000, "ours:rules": 1100, "ours:measured": 1200, "grouped": float("nan")})

    monkeypatch.setattr(bench_measure, "MODEL_ROWS", MODEL_ROWS[:1])
    monkeypatch.setattr(bench_measure, "model_variants", lambda *a, **k: {})
    monkeypatch.setattr(bench_measure, "compare", compare)
    assert gpu_check.check_models(torch.device("cpu"), quick=True, budget=60) is False
    out = capsys.readouterr().out
    (row,) = _table(out, "## Models")
    assert row[4:7] == ["1.20", "0.00 **FAIL**", "2.00"] and row[8:11] == ["1.10", "1.20", "nan **FAIL**"], row
    assert out.rstrip().endswith("FAILED: ratios marked FAIL are outside (0.1, 100.0): a broken measurement.")


def test_a_formulation_outside_its_tolerance_fails_the_section(monkeypatch, capsys):
    monkeypatch.setattr(gpu_check, "LAYERS", gpu_check.LAYERS[:1])
    monkeypatch.setattr(gpu_check, "BF16_TOL", {"output": 1e-6, "input grad": 1e-6, "param grad": 1e-6})
    import torch

    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert gpu_check.check_formulations(torch.device("cpu"), quick=False) is False
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    (row,) = _table(out, "## Formulations")
    fp32, bf16 = row[1::2], row[2::2]
    assert all("FAIL" not in c for c in fp32) and all("**FAIL**" in c for c in bf16 if c != "-"), row
    assert out.rstrip().endswith("FAILED: see the cells marked FAIL.")


@pytest.mark.slow
def test_a_hung_section_is_killed_with_its_child_processes_at_its_time_limit():
    # The section starts a grandchild that would keep the output pipe open for a minute (as torchrun's workers
    # would): the whole process group goes.
    # Each says so on the pipe if it lives to the end of its minute: killed at 5 s, neither may.
    grandchild = "import time; time.sleep(60); print('grandchild lived', flush=True)"
    hang = (f"import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', {grandchild!r}]);"
            " print('started', flush=True); time.sleep(60); print('child lived', flush=True)")
    run = gpu_check.run_with_timeout([sys.executable, "-c", hang], timeout=5)
    assert run.returncode is None and run.stdout == "started\n"


def test_sections_left_without_time_are_reported_and_fail_the_check(capsys):
    assert gpu_check.main(["--device", "cpu", "--quick", "--sections", "formulations", "models", "--total", "5"]) == 1
    out = capsys.readouterr().out
    assert re.search(r"\| formulations \| skipped: out of time \| 0 \|\n\| models \| skipped: out of time \| 0 \|",
                     out), out
