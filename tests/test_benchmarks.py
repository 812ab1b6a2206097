"""The benchmark scripts of BENCHMARKS.md run and print complete rows (their timings are not checked: tests check
behaviour, benchmarks check speed)."""
from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
import torch

from odconv.formulations import FORMULATIONS

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import bench_cpu_probes  # noqa: E402
import bench_odconv  # noqa: E402


@pytest.fixture(autouse=True)
def _restore_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def test_layer_section_prints_a_ratio_for_every_variant_and_the_dispatch_choice(capsys):
    bench_odconv.main(["--section", "layers", "--res", "32", "--zoo", "od_resnet18", "--quick", "--repeats", "1",
                       "--threads", "1", "--formulations", "columns", "taps"])
    out = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines() if re.search(r"\bfwd(\+bwd)?\b", line)]
    assert len(rows) == 2 * bench_odconv.QUICK_SHAPES
    for row in rows:
        # shape (8 fields), pass, static ms, released, ours, =columns, =taps, choice
        assert row[-1] in FORMULATIONS, row
        ratios = [float(v) for v in row[-6:-1]]
        assert all(r > 0 for r in ratios), row
    assert any(row[-1] == "taps" for row in rows), "the 32px ResNet18 3x3 layers should use the taps formulation"


def test_cpu_probes_print_throughput_and_the_fresh_memory_ratio(capsys):
    bench_cpu_probes.main(["--threads", "1"])
    out = capsys.readouterr().out
    assert len(re.findall(r"GMAC/s", out)) == 5
    assert len(re.findall(r"ratio\s+[\d.]+", out)) == 4


@pytest.mark.parametrize("kernel_num", [1, 4])
def test_no_formulation_keeps_more_for_backward_than_the_released_code(kernel_num):
    torch.manual_seed(0)
    layer = bench_odconv.ODConv2d(32, 32, 3, padding=1, kernel_num=kernel_num).train()
    released = bench_odconv.ReleasedODConv2d(32, 32, 3, padding=1, kernel_num=kernel_num).train()
    released.load_state_dict(layer.state_dict())
    x = torch.randn(8, 32, 14, 14, requires_grad=True)
    base = bench_odconv.saved_bytes(lambda: released(x))
    for f in FORMULATIONS:
        if f == "feature" or (f == "columns" and kernel_num > 1):
            # feature: 1x1 layers only. columns keeps its K pre-mix outputs (K times the output), more than the
            # per-sample kernels on a map this large; the rules use it only where the kernel dwarfs the maps.
            continue
        layer.formulation = f
        assert bench_odconv.saved_bytes(lambda: layer(x)) <= base, f
    assert torch.allclose(layer(x), released(x), atol=1e-5)


def test_summary_of_a_saved_layer_table_lists_rows_where_the_rules_lose(tmp_path, capsys):
    table = tmp_path / "layers.txt"
    table.write_text(
        "### 224px, batch 16: 1 distinct shapes\n"
        "shape                                      pass    static ms  released      ours  =grouped     =taps  choice\n"
        " 256->256  3x3 s1 g1    K1  14px b16       fwd          8.00      5.00      2.00      4.00      2.00  taps\n"
        " 256->256  3x3 s1 g1    K1  14px b16       fwd+bwd     25.00      4.00      6.00      4.00      6.00  taps\n"
        "                                           mem          8.4M      6.04      1.01      6.04      1.01\n")
    bench_odconv.main(["--summarize", str(table)])
    out = capsys.readouterr().out
    assert out.startswith("2 time rows")
    assert "1 above 1.10" in out and "memory rows above released: 0" in out
    assert "fwd+bwd  released   4.00  taps 6.00" in out


def test_profile_of_a_training_step_lists_odconv_ops_with_shapes(capsys):
    bench_odconv.main(["--profile", "od_resnet18:1:2:32", "--threads", "1"])
    out = capsys.readouterr().out
    assert "Profile: od_resnet18:1:2:32" in out
    assert "TapsODConvBackward" in out or "aten::convolution_backward" in out
    assert re.search(r"\[\[2, \d+, \d+, \d+\]", out)  # input shapes (batch 2) are recorded
