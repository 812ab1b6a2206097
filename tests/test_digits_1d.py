"""The 1-D example (scripts/digits_1d.py) as a user runs it, for two steps: what it prints and the twins it builds."""
from __future__ import annotations

import re
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
from torch import nn

import odconv

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))
import digits_1d  # noqa: E402


@pytest.mark.slow  # a subprocess: torch, sklearn and two trainings of two steps, about 10 s here
def test_example_trains_both_twins_and_prints_each_seed_and_the_mean():
    proc = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "digits_1d.py"), "--seeds", "0", "1", "--epochs", "1", "--steps", "2"],
        capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    seeds = re.findall(r"seed (\d): static Conv1d top-1 ([\d.]+)%  ODConv1d \(4x\) top-1 ([\d.]+)%", proc.stdout)
    assert [s for s, _, _ in seeds] == ["0", "1"], proc.stdout
    for i, name in ((1, "static Conv1d"), (2, "ODConv1d 4x")):
        values = [float(s[i]) for s in seeds]
        assert all(0.0 <= v <= 100.0 for v in values)
        mean, std = re.search(rf"{name} \([\d,]+ params\): top-1 ([\d.]+) ± ([\d.]+)% over 2 seeds",
                              proc.stdout).groups()
        assert abs(float(mean) - statistics.mean(values)) < 0.006
        assert abs(float(std) - statistics.stdev(values)) < 0.006


def test_twins_share_the_network_and_differ_only_in_the_converted_convs():
    static, od = digits_1d.build("static", 0, 4), digits_1d.build("odconv", 0, 4)
    convs = [type(m) for m in static if isinstance(m, nn.Conv1d)]
    dynamic = [type(m) for m in od if isinstance(m, (nn.Conv1d, odconv.ODConv1d))]
    assert convs == [nn.Conv1d] * 4 and dynamic == [nn.Conv1d] + [odconv.ODConv1d] * 3
    x = digits_1d.digits_as_sequences()[0][:8]
    assert x.shape == (8, 1, 64) and float(x.max()) <= 1.0
    assert od(x).shape == static(x).shape == (8, 10)
