"""The benchmark scripts of BENCHMARKS.md run and print complete rows (their timings are not checked: tests check
behaviour, benchmarks check speed)."""
from __future__ import annotations

import re
import sys
from collections import Counter
from pathlib import Path

import pytest
import timm
import torch

import models  # noqa: F401  (registers the zoo)
import odconv
from odconv.formulations import FORMULATIONS

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import bench_cpu_probes  # noqa: E402
import bench_measure  # noqa: E402
import bench_odconv  # noqa: E402


@pytest.fixture(autouse=True)
def _restore_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


@pytest.mark.slow
def test_layer_section_prints_a_ratio_for_every_variant_and_the_dispatch_choice(capsys, tmp_path):
    out_file = tmp_path / "benchmarks" / "layers.txt"
    bench_odconv.main(["--section", "layers", "--res", "32", "--zoo", "od_resnet18", "--quick", "--repeats", "1",
                       "--threads", "1", "--formulations", "columns", "taps", "--out", str(out_file)])
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if re.search(r"\bfwd(\+bwd)?\b", line)]
    assert len(lines) == 2 * bench_odconv.QUICK_SHAPES
    for line in lines:
        row = line.split()
        # shape, pass, static ms, released, ours, =columns, =taps, choice (the values are bench_measure.compare's
        # to check: it refuses a time that is not finite and positive)
        assert all(re.fullmatch(r"\d+\.\d\d", v) for v in row[-6:-1]), line
        cin, cout, kh, kw, st, g, k, px, b = map(int, bench_odconv.SHAPE.search(line).groups())
        shape = bench_odconv.LayerShape(b, cin, cout, px, px, (kh, kw), (st, st), g, k, kh * kw > 1)
        assert row[-1] == bench_odconv.choose(shape, "cpu", "fwd+bwd" in row), row
    assert any(row.split()[-1] == "taps" for row in lines), "the 32px ResNet18 3x3 layers should use taps"
    # --out: the same table, after a first line saying how it was made, which --summarize reads back.
    written = out_file.read_text().splitlines()
    assert written[0].startswith("torch ") and "command: python scripts/bench_odconv.py --section layers" in written[0]
    assert written[1:] == out[out.index("\n## Layers"):].splitlines()[:len(written) - 1]
    assert [line for line in written if line in lines] == lines
    bench_odconv.main(["--summarize", str(out_file)])
    assert re.match(r"\d+ time rows; chosen formulation over released: median", capsys.readouterr().out)


@pytest.mark.slow
def test_cpu_probes_print_throughput_and_the_fresh_memory_ratio(capsys):
    bench_cpu_probes.main(["--threads", "1"])
    out = capsys.readouterr().out
    assert len(re.findall(r"GMAC/s", out)) == 5
    assert len(re.findall(r"ratio\s+[\d.]+", out)) == 4


def test_per_sample_probe_prints_both_formulations_per_layer(capsys):
    bench_cpu_probes.main(["--threads", "1", "--probes", "per_sample", "--batch", "2"])
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("  ")]
    assert len(rows) == 7
    assert all(re.search(r"grouped\s+[\d.]+\s+bmm\s+[\d.]+\s+ratio\s+[\d.]+\s+(bmm|grouped) faster", r) for r in rows)


@pytest.mark.parametrize("kernel_num", [1, 4])
def test_no_formulation_keeps_more_for_backward_than_the_released_code(kernel_num):
    torch.manual_seed(0)
    layer = odconv.ODConv2d(32, 32, 3, padding=1, kernel_num=kernel_num).train()
    released = bench_measure.ReleasedODConv2d(32, 32, 3, padding=1, kernel_num=kernel_num).train()
    released.load_state_dict(layer.state_dict())
    x = torch.randn(8, 32, 14, 14, requires_grad=True)
    base = bench_measure.saved_bytes(lambda: released(x))
    for f in FORMULATIONS:
        if f in ("feature", "single") or (f == "columns" and kernel_num > 1):
            # feature: 1x1 layers only; single: one sample only (forcing either here raises). columns keeps its K pre-mix outputs (K times the output), more than the
            # per-sample kernels on a map this large; the rules use it only where the kernel dwarfs the maps.
            continue
        layer.formulation = f
        assert bench_measure.saved_bytes(lambda: layer(x)) <= base, f
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


@pytest.mark.slow
def test_profile_attributes_forward_time_to_the_formulations_the_dispatch_chose(capsys):
    bench_odconv.main(["--profile", "od_resnet18:1:2:32", "--threads", "1"])
    out = capsys.readouterr().out
    assert "Profile: od_resnet18:1:2:32" in out
    assert re.search(r"\[\[2, \d+, \d+, \d+\]", out)  # input shapes (batch 2) are recorded
    table = out.split("## ODConv layers by formulation")[1].strip().splitlines()[2:]  # after title, header
    profiled = {line.split()[0]: int(line.split()[1]) for line in table}
    model = timm.create_model("od_resnet18", kernel_num=1, num_classes=10).train()
    used = Counter(row.formulation for row in odconv.explain(model, torch.randn(2, 3, 32, 32)))
    assert profiled == dict(used) and sum(used.values()) == 16  # every 3x3 conv of the 8 blocks


def test_kernel_only_probe_prints_every_formulation_and_the_rules_pick(capsys, monkeypatch):
    """scripts/bench_kernel_only.py (BENCHMARKS.md "CondConv and DyConv"): one row per shape, a ratio per
    formulation that can compute the layer ("—" for `single`, one sample only), and the rules send a kernel-only
    3x3 layer on 1x1 maps to `taps` (only the centre tap sees data)."""
    import importlib.util
    import sys

    spec = importlib.util.spec_from_file_location("bench_kernel_only", "scripts/bench_kernel_only.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(sys, "argv", ["bench_kernel_only.py", "--shapes", "4x64x1", "--repeats", "1"])
    module.main()
    header, row = capsys.readouterr().out.strip().splitlines()
    assert header.split()[3:10] == ["grouped", "folded", "bmm", "feature", "columns", "taps", "single"]
    cells = row.split()
    assert cells[0] == "4x64x1" and cells[-1] == "taps"
    assert all(c.endswith("x") for c in cells[2:8]) and cells[8] == "—"


def test_study_models_probe_prints_a_step_time_for_each_model(capsys, monkeypatch):
    """scripts/bench_study_models.py (BENCHMARKS.md "CondConv and DyConv"): one CPU-seconds row per model."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_study_models", "scripts/bench_study_models.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(sys, "argv", ["bench_study_models.py", "--batch", "2", "--size", "16", "--repeats", "1"])
    module.main()
    header, *rows = capsys.readouterr().out.strip().splitlines()
    assert header.startswith("batch 2, 16px, 1 thread(s)")
    assert [r.split()[0] for r in rows] == list(module.DEFAULT)
    assert all(re.fullmatch(r"\d+\.\d\d", r.split()[1]) for r in rows), rows  # CPU seconds (>0: the script's check)
    # A KernelWarehouse model beside itself as it ran before (every tap assembled, the grouped conv for every call).
    monkeypatch.setattr(sys, "argv", ["bench_study_models.py", "--batch", "2", "--size", "8", "--repeats", "1",
                                      "--models", "kw1x", "--before"])
    module.main()
    header, *rows = capsys.readouterr().out.strip().splitlines()
    assert [r.rsplit(maxsplit=1)[0].strip() for r in rows] == ["kw1x", "kw1x (before)"]


def test_a_step_that_takes_no_time_is_refused_not_tabled():
    variants = {"static": (lambda: None, None, []), "broken": (lambda: None, None, [])}
    clock = iter([0.0, 1e-3] + [5.0, 5.0] * 10)  # the static step takes 1 ms, then every step takes 0 s

    def frozen():
        return next(clock)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(bench_measure, "CLOCK", frozen)
        with pytest.raises(RuntimeError, match=r"benchmark variant 'broken' measured \[0\.0\] s"):
            bench_measure.compare(variants, torch.device("cpu"), repeats=1, warmup=0)


@pytest.mark.slow  # four fresh processes (one timing, three peak-memory), each importing torch and timm
def test_headline_command_prints_time_and_memory_ratios_over_torchvision_and_the_static_twin(tmp_path, capsys):
    import bench_headline
    out = tmp_path / "headline.json"
    assert bench_headline.main(["--quick", "--rows", "od_resnet18", "--threads", "1", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "load average before:" in printed and "load average after:" in printed and "## threads: 1" in printed
    [line] = [line for line in printed.splitlines() if line.startswith("| od_resnet18 ")]
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells[:5] == ["od_resnet18", "1", "2", "32", "train"] and len(cells) == 12, cells
    [result] = __import__("json").loads(out.read_text())["results"]
    assert result["ms"]["threads"] == 1  # the child ran on the thread count asked for
    for variant in ("static", "torchvision", "ours"):
        assert result["ms"][variant] > 0 and result["peak_mib"][variant] > 0, result
    # The printed ratios are the recorded figures' ratios.
    assert float(cells[8]) == pytest.approx(result["ms"]["ours"] / result["ms"]["torchvision"], abs=0.006)
    assert float(cells[11]) == pytest.approx(result["peak_mib"]["ours"] / result["peak_mib"]["torchvision"], abs=0.006)


def test_headline_rows_filter_names_the_models_when_nothing_matches():
    import bench_headline
    with pytest.raises(SystemExit, match=r"--rows \['od_resnet19'\] matches none of \['od_mobilenetv2_100'"):
        bench_headline.main(["--rows", "od_resnet19"])


@pytest.mark.slow
def test_models_section_measures_the_later_members_over_their_static_twins(capsys, monkeypatch):
    """KernelWarehouse 4x, DCD and FDConv (bench_measure.FAMILY_ROWS' ResNet18 rows; KW 1x runs the same code as 4x),
    shrunk to batch 2 at 16px: a training row with time and memory ratios and an eval row each (--passes keeps the
    test cheap), no released column (that baseline is ODConv's)."""
    rows = [("kw_resnet18", 4, 2, 16), ("dcd_resnet18", 1, 2, 16), ("fd_resnet18", 1, 2, 16)]
    assert {r[:2] for r in rows} < {r[:2] for r in bench_measure.FAMILY_ROWS}
    monkeypatch.setattr(bench_odconv, "MODEL_ROWS", [])
    monkeypatch.setattr(bench_odconv, "FAMILY_ROWS", rows)
    bench_odconv.main(["--section", "models", "--model-repeats", "1", "--threads", "1", "--passes", "train2", "eval1"])
    printed = [line.split() for line in capsys.readouterr().out.splitlines()
               if line.split()[:1] and line.split()[0] in {r[0] for r in rows}]
    assert [(r[0], r[1], r[4], r[2]) for r in printed] == [
        (name, str(k), kind, b) for name, k, _, _ in rows for kind, b in (("train", "2"), ("eval", "1"))]
    for r in printed:
        static_ms, released, ours = r[5:8]
        assert float(static_ms) > 0 and released == "-" and float(ours) > 0, r
        if r[4] == "train":  # memory over the static twin's: released "-", ours a ratio
            assert r[8] == "-" and float(r[9]) > 0, r
        else:
            assert len(r) == 8, r
    # Each row's dynamic network is what its name says, beside the static twin it is divided by.
    assert bench_measure.static_twin("kw_resnet50") == "static_resnet50"
    assert bench_measure.build_dynamic("kw_resnet18", 4).kw_ratio == 4
    with pytest.raises(ValueError, match="dcd_resnet18 has no kernel count; give k 1, got 4"):
        bench_measure.build_dynamic("dcd_resnet18", 4)
