"""The results dashboard on run directories written as the training engine writes them: per-run rows, configurations
grouped over seeds (mean ± std, n) with short labels, the reproduction status, and the interactive page, which a real
headless Chromium loads (no console message, every chart rendered, short labels, integer epochs); `--watch`."""
import json
import re
import statistics
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from browser import chart, find_chromium, render, texts
from conftest import TINY, run_train

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))
import report  # noqa: E402


def write_run(run_dir: Path, *, model: str, kernel_num: int, data: str, epochs: int, val_top1: list[float],
              seed: int = 0, summary: dict | None = None, ema_top1: list[float] | None = None,
              cut_last_line: bool = False, rate: float = 100.0):
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(
        {"model": {"name": model, "kernel_num": kernel_num}, "data": {"name": data, "img_size": 32},
         "trainer": {"epochs": epochs, "seed": seed}, "paths": {"run_dir": str(run_dir)}}))
    lines = []
    for epoch, top1 in enumerate(val_top1):
        for step in range(epoch * 10, epoch * 10 + 10, 5):
            lines.append(dict(kind="train", epoch=epoch, step=step, loss=2.0 / (step + 1), lr=0.1, temperature=1.0,
                              images_per_s=rate, time=0.0))
        lines.append(dict(kind="val", epoch=epoch, step=epoch * 10 + 10, loss=1.0, top1=top1, top5=min(100, top1 + 20),
                          time=0.0))
        if ema_top1:
            lines.append(dict(kind="val", ema=True, epoch=epoch, step=epoch * 10 + 10, loss=1.0, top1=ema_top1[epoch],
                              top5=99.0, time=0.0))
    text = "\n".join(json.dumps(r) for r in lines) + "\n"
    if cut_last_line:
        text += '{"kind": "train", "epoch": 9, "st'
    (run_dir / "metrics.jsonl").write_text(text)
    if summary is not None:
        (run_dir / "summary.json").write_text(json.dumps(summary))


def _od4x_summary(top1: float) -> dict:
    return dict(model="od_resnet18", kernel_num=4, params=44_900_000, best_top1=top1, best_top5=91.6, final_top1=top1,
                final_top5=91.6, epochs=3, global_batch_size=256, status="completed")


@pytest.fixture
def runs(tmp_path):
    root = tmp_path / "runs"
    for seed, top1 in enumerate([74.02, 73.5, 74.6]):  # three seeds of one configuration, timestamped folders
        write_run(root / "resnet18_od4x" / f"2026-12-01_00-0{seed}-00", model="od_resnet18", kernel_num=4,
                  data="imagenet", epochs=3, val_top1=[40.0, 70.5, top1], seed=seed, summary=_od4x_summary(top1),
                  rate=100.0 + 10 * seed)
    write_run(root / "r18_static", model="static_resnet18", kernel_num=0, data="imagenet", epochs=3,
              val_top1=[50.0, 71.0, 72.0], summary=dict(model="static_resnet18", kernel_num=0, params=11_689_512,
                                                        best_top1=72.0, best_top5=90.0, epochs=3, status="completed"))
    # Stopped after 2 of its 4 epochs: the summary's `epochs` counts the epochs that ran.
    write_run(root / "r50_static", model="static_resnet50", kernel_num=0, data="imagenet", epochs=4,
              val_top1=[60.0, 77.0], ema_top1=[61.0, 77.5],
              summary=dict(model="static_resnet50", kernel_num=0, params=25_557_032, best_top1=77.0, best_top5=93.1,
                           final_top1=77.0, final_top5=93.1, epochs=2, global_batch_size=256, status="stopped"))
    # An unfinished demo run whose process died mid-line and which was resumed: duplicated records for epoch 1.
    write_run(root / "demo", model="od_resnet18", kernel_num=1, data="demo", epochs=5, val_top1=[50.0, 81.25],
              cut_last_line=True)
    with open(root / "demo" / "metrics.jsonl", "a") as f:
        f.write("\n" + json.dumps(dict(kind="val", epoch=1, step=20, loss=0.5, top1=82.5, top5=99.0, time=1.0)) + "\n")
        f.write(json.dumps(dict(kind="train", epoch=1, step=25, loss=0.1, lr=0.1, skipped_images=12, time=2.0)) + "\n")
    (root / "demo" / "skipped_images.txt").write_text("/data/train/3/bad.png\n/data/train/7/cut.png\n"
                                                      "/data/train/9/empty.png\n")
    (root / "demo" / ".hydra").mkdir()
    (root / "demo" / ".hydra" / "config.yaml").write_text("not: a run\n")
    return root


def tables(md: str) -> dict[str, list[dict[str, str]]]:
    """The Markdown report's tables by section title."""
    out: dict[str, list[dict[str, str]]] = {}
    for section in md.split("\n## ")[1:]:
        lines = [line for line in section.splitlines() if line.startswith("|")]
        header = [c.strip() for c in lines[0].strip("|").split("|")]
        out[section.splitlines()[0]] = [dict(zip(header, (c.strip() for c in line.strip("|").split("|"))))
                                        for line in lines[2:]]
    return out


OD4X = "od_resnet18 K=4 data=imagenet epochs=3"  # the fixture's labels: the settings that differ, short names
DEMO = "od_resnet18 K=1 data=demo epochs=5"
STATIC = "static_resnet18 data=imagenet epochs=3"


@pytest.mark.slow
def test_seeds_of_one_configuration_are_grouped_and_sorted_within_their_backbone(runs, tmp_path):
    md, _ = report.write_report([runs], tmp_path / "out")
    t = tables(md.read_text())
    groups = t["Configurations (mean ± std over seeds)"]
    assert [(g["Configuration"], g["n"]) for g in groups] == [(DEMO, "1"), (OD4X, "3"), (STATIC, "1"), (
        "static_resnet50 data=imagenet epochs=4", "1")]
    demo, od, static, r50 = groups  # within resnet18: best mean top-1 first (the demo's 82.5 on digits)
    seeds = [74.02, 73.5, 74.6]
    assert od["Top-1"] == f"{statistics.fmean(seeds):.2f} ± {statistics.stdev(seeds):.2f}"
    assert (od["K"], od["Top-5"], od["Params (M)"], od["Images/s"]) == ("4", "91.60 ± 0.00", "44.90 ± 0.00", "110 ± 10")
    assert od["Paper top-1"] == "74.19" and od["Δ top-1"] == f"{statistics.fmean(seeds) - 74.19:+.2f}"
    assert static["Top-1"] == "72.00 ± —" and r50["Paper top-1"] == "76.23" and demo["Paper top-1"] == "—"  # n = 1
    assert (r50["Final top-1"], demo["Final top-1"]) == ("77.00 ± —", "82.50 ± —")  # summary's; else the last record
    assert od["MACs (M)"].endswith("± 0.0") and float(od["MACs (M)"].split()[0]) > float(static["MACs (M)"].split()[0])
    runs_table = {r["Run"]: r for r in t["Runs"]}
    assert {f"{OD4X} seed {s}" for s in range(3)} <= set(runs_table)  # no timestamps in labels
    assert runs_table[f"{OD4X} seed 1"]["Top-1"] == "73.50"
    assert runs_table[f"{OD4X} seed 1"]["Δ top-1"] == f"{73.5 - 74.19:+.2f}"
    resumed = runs_table[f"{DEMO} seed 0"]  # no summary yet: the metrics; the later record wins
    assert (resumed["Top-1"], resumed["Status"], resumed["Epochs"], resumed["Paper row"]) == ("82.50", "running", "2/5",
                                                                                             "—")
    stopped = next(r for r in t["Runs"] if r["Model"] == "static_resnet50")
    assert (stopped["Epochs"], stopped["Status"]) == ("2/4", "stopped")
    assert resumed["Skipped images"] == "3"  # distinct files from skipped_images.txt, not the 12 read attempts
    assert "- `/data/train/7/cut.png`" in md.read_text()
    # The published rows we have runs for, beside ours, with the difference and the spread.
    status = {r["Published row"]: r for r in t["Reproduction status (ImageNet)"]}
    assert sorted(status) == ["ResNet18", "ResNet18 + ODConv (4x)", "ResNet50"]
    row = status["ResNet18 + ODConv (4x)"]
    assert (row["Ours"], row["n"], row["Our top-1"], row["Δ top-1"]) == (OD4X, "3", od["Top-1"], od["Δ top-1"])


def test_labels_name_only_what_differs_and_means_something_for_the_model():
    def config(name, **model):
        return {"model.name": name, "model.temperature_init": 30.0, "model.temperature_epochs": 10.0,
                "data.name": "demo", **{f"model.{k}": v for k, v in model.items()}}

    configs = [config("static_resnet18", kernel_num=0),  # the static twin: no K, no temperature
               config("od_resnet18", kernel_num=1, attention_norm="layer"),
               config("od_resnet18", kernel_num=1, attention_norm="batch"),
               config("od_resnet18", kernel_num=4, attention_norm="layer", attentions=["spatial", "kernel"]),
               config("condconv_resnet18", num_experts=8)]
    configs[0]["model.temperature_epochs"] = 0.0  # differs, but a static model has no temperature
    assert report.describe(configs) == [
        "static_resnet18", "od_resnet18 K=1 norm=layer", "od_resnet18 K=1 norm=batch",
        "od_resnet18 K=4 norm=layer att=spatial+kernel", "condconv_resnet18"]
    # Settings that differ only where they mean nothing still give distinct labels.
    assert report.describe([config("static_resnet18"), {**config("static_resnet18"), "model.temperature_init": 1.0}]) \
        == ["static_resnet18", "static_resnet18 #2"]


@pytest.mark.slow
def test_html_is_one_offline_file_with_interactive_charts_and_the_full_configuration(runs, tmp_path):
    _, page = report.write_report([runs], tmp_path / "out")
    text = page.read_text()
    assert text.count("<script src=") == 0 and not re.search(r"<link[^>]+href=.http", text)  # nothing fetched
    assert "Plotly.newPlot" in text and text.count("<script>/**") <= 1  # plotly.js inlined once
    ids = re.findall(r'<div id="([^"]+)" class="plotly-graph-div', text)
    assert ids == ["top1-bars", "val-top1", "train-loss"] + [f"run-{i}" for i in range(6)]
    assert "<summary title='" in text and "model.kernel_num: 4" in text  # the full configuration, hover and click
    assert "2026-12-01_00-0" not in re.sub(r"<p class='note'><code>[^<]*</code></p>", "", text)  # paths only
    assert "1 unreadable line(s) in metrics.jsonl skipped" in text and "<code>/data/train/9/empty.png</code>" in text


def test_cli_writes_both_files_and_bad_paths_give_one_line_errors(runs, tmp_path, capsys):
    out = tmp_path / "out"
    assert report.main([str(runs / "r50_static"), "--out", str(out)]) == 0
    assert "| static_resnet50 | resnet50 | static |" in capsys.readouterr().out
    assert (out / "results.md").is_file() and (out / "results.html").is_file()
    missing = tmp_path / "no_such_run"
    assert report.main([str(missing), "--out", str(out)]) == 2
    assert capsys.readouterr().err == f"error: Run directory {missing} does not exist.\n"
    (tmp_path / "empty").mkdir()
    with pytest.raises(report.ReportError, match="is not a run directory"):
        report.write_report([tmp_path / "empty"], out)
    with pytest.raises(report.ReportError, match=f"{missing} does not exist"):
        report.find_runs([missing])


def test_empty_columns_are_left_out(runs, tmp_path):
    md, _ = report.write_report([runs / "demo"], tmp_path / "out")  # digits, no summary, no EMA, no paper row
    t = tables(md.read_text())
    assert list(t["Runs"][0]) == ["Run", "Model", "K", "Seed", "Data", "Epochs", "Status", "Top-1", "Top-5",
                                  "Final top-1", "Skipped images", "Images/s"]
    assert "Reproduction status (ImageNet)" not in t


@pytest.mark.slow
def test_watch_rewrites_the_report_when_a_run_logs_a_new_line(runs, tmp_path):
    run = runs / "demo"
    out = tmp_path / "out"
    lines: list[str] = []
    watcher = threading.Thread(target=report.watch, args=([run], out, "live", 0.2, 25),
                               kwargs=dict(on_write=lines.append))
    watcher.start()
    while not lines and watcher.is_alive():
        time.sleep(0.05)
    first = tables((out / "results.md").read_text())["Runs"][0]
    assert first["Epochs"] == "2/5" and "<meta http-equiv='refresh' content='0.2'>" in (out / "results.html").read_text()
    with open(run / "metrics.jsonl", "a") as f:  # the run finishes its third epoch
        f.write(json.dumps(dict(kind="val", epoch=2, step=30, loss=0.4, top1=90.0, top5=100.0, time=3.0)) + "\n")
    watcher.join(timeout=60)
    assert not watcher.is_alive() and len(lines) == 2, lines  # once at the start, once for the new line
    now = tables((out / "results.md").read_text())["Runs"][0]
    assert (now["Epochs"], now["Top-1"]) == ("3/5", "90.00")


def test_watch_cli_stops_after_its_iterations(runs, tmp_path, capsys):
    assert report.main([str(runs / "r50_static"), "--out", str(tmp_path), "--watch", "--interval", "0.01",
                        "--iterations", "3"]) == 0
    assert capsys.readouterr().out.count("wrote") == 1  # nothing changed after the first write
    with pytest.raises(SystemExit):
        report.main([str(runs), "--watch", "--interval", "0"])
    assert "--interval must be > 0 seconds, got 0.0" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------ a real sweep
@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """Two models x two seeds, two tiny epochs each, trained by a local Hydra multirun (one job after another)."""
    root = tmp_path_factory.mktemp("sweep")
    proc = run_train(["-m", *TINY, "model=resnet18,demo", "trainer.seed=0,1", "trainer.epochs=2",
                      "trainer.limit_train_batches=2", "trainer.limit_val_batches=1",
                      f"paths.cache_dir={root / 'cache'}", f"paths.runs_root={root}"])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return root / "multirun"


@pytest.mark.slow
def test_report_aggregates_real_runs_of_a_seed_sweep(sweep, tmp_path):
    md, _ = report.write_report([sweep], tmp_path / "out")
    groups = {g["Configuration"]: g for g in tables(md.read_text())["Configurations (mean ± std over seeds)"]}
    assert sorted(groups) == ["od_resnet18", "static_resnet18"]  # nothing else differs between them
    summaries = {}
    for path in sweep.glob("*/*/summary.json"):
        config = yaml.safe_load((path.parent / "config.yaml").read_text())
        summaries.setdefault(config["model"]["name"], []).append(json.loads(path.read_text()))
    for label, group in groups.items():
        seeds = summaries[label]
        top1 = [s["best_top1"] for s in seeds]
        assert group["n"] == "2" and len(seeds) == 2
        assert group["Top-1"] == f"{statistics.fmean(top1):.2f} ± {statistics.stdev(top1):.2f}"
        assert group["Params (M)"] == f"{seeds[0]['params'] / 1e6:.2f} ± 0.00"
        assert group["MACs (M)"] != "—" and group["Images/s"] != "—"
        assert "Paper top-1" not in group  # digits: no published row, the column is left out
    runs_table = {r["Run"] for r in tables(md.read_text())["Runs"]}
    assert runs_table == {f"{label} seed {s}" for label in groups for s in range(2)}


@pytest.mark.slow
def test_chromium_loads_the_sweeps_report_without_console_messages_and_renders_every_chart(sweep, tmp_path):
    _, page = report.write_report([sweep], tmp_path / "out")
    dom, console = render(find_chromium(), page)
    assert console == [], console
    ids = re.findall(r'<div id="([^"]+)" class="plotly-graph-div js-plotly-plot', dom)  # class added once plotted
    assert ids == ["top1-bars", "val-top1", "train-loss", "run-0", "run-1", "run-2", "run-3"]
    for div in ids:
        assert '<svg class="main-svg"' in chart(dom, div), div
    bars = chart(dom, "top1-bars")
    assert bars.count('<g class="point">') == 2  # one bar per configuration
    assert sorted(texts(bars, "ytick")) == ["od_resnet18", "static_resnet18"]  # the short labels
    curves = chart(dom, "val-top1")
    assert texts(curves, "xtick") == ["1", "2"]  # whole epochs
    assert sorted(texts(curves, "legendtext")) == ["od_resnet18 (n=2)", "static_resnet18 (n=2)"]
    assert curves.count('class="js-fill"') >= 2  # the ± std band of each configuration
    assert texts(curves, "updatemenu-item-text") == ["mean ± std over seeds", "single runs"]
    assert all('class="modebar' in chart(dom, div) for div in ids)  # zoom, pan, reset, download
    legends = {div: texts(chart(dom, div), "legendtext") for div in ids if div.startswith("run-")}
    order = re.findall(r"<h3>([^<]+)</h3>", dom)
    for label, div in zip(order, sorted(legends)):
        assert ("temperature" in legends[div]) == label.startswith("od_resnet18"), (label, legends[div])


@pytest.mark.slow  # needs chromium, which the first use may install
def test_console_messages_and_errors_are_caught(tmp_path):
    """The check above would see a script error: a page with one is reported."""
    page = tmp_path / "bad.html"
    page.write_text("<!DOCTYPE html><html><body><script>console.warn('w'); undefinedFunction()</script></body></html>")
    _, console = render(find_chromium(), page, budget_ms=1000)
    assert len(console) == 2 and "undefinedFunction is not defined" in console[1], console
