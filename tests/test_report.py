"""The results dashboard on run directories written as the training engine writes them: per-run rows, configurations
grouped over seeds (mean ± std, n), the grouped chart, curves labelled by model and seed, skipped images."""
import base64
import json
import re
import statistics
import sys
from pathlib import Path

import pytest
import yaml

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


@pytest.mark.slow
def test_seeds_of_one_configuration_are_grouped_and_sorted_within_their_backbone(runs, tmp_path):
    md, _ = report.write_report([runs], tmp_path / "out")
    t = tables(md.read_text())
    groups = t["Configurations (mean ± std over seeds)"]
    assert [(g["Backbone"], g["n"]) for g in groups] == [("resnet18", "1"), ("resnet18", "3"), ("resnet18", "1"),
                                                        ("resnet50", "1")]
    demo, od, static, r50 = groups  # within resnet18: best mean top-1 first (the demo's 82.5 on digits)
    seeds = [74.02, 73.5, 74.6]
    assert od["Top-1"] == f"{statistics.fmean(seeds):.2f} ± {statistics.stdev(seeds):.2f}"
    assert (od["K"], od["Top-5"], od["Params (M)"], od["Images/s"]) == ("4", "91.60 ± 0.00", "44.90 ± 0.00", "110 ± 10")
    assert od["Paper top-1"] == "74.19" and od["Δ top-1"] == f"{statistics.fmean(seeds) - 74.19:+.2f}"
    assert static["Top-1"] == "72.00 ± —" and r50["Paper top-1"] == "76.23" and demo["Paper top-1"] == "—"  # n = 1
    assert (r50["Final top-1"], demo["Final top-1"]) == ("77.00 ± —", "82.50 ± —")  # summary's; else the last record
    assert od["MACs (M)"].endswith("± 0.0") and float(od["MACs (M)"].split()[0]) > float(static["MACs (M)"].split()[0])
    assert od["Configuration"] == "od_resnet18 kernel_num=4 data.name=imagenet trainer.epochs=3"  # what differs between groups
    runs_table = {r["Run"]: r for r in t["Runs"]}
    assert {f"{od['Configuration']} seed {s}" for s in range(3)} <= set(runs_table)  # no timestamps in labels
    assert runs_table[f"{od['Configuration']} seed 1"]["Top-1"] == "73.50"
    resumed = runs_table[f"{demo['Configuration']} seed 0"]  # no summary yet: the metrics; the later record wins
    assert (resumed["Top-1"], resumed["Status"], resumed["Epochs"], resumed["Paper row"]) == ("82.50", "running", "2/5",
                                                                                             "—")
    stopped = next(r for r in t["Runs"] if r["Model"] == "static_resnet50")
    assert (stopped["Epochs"], stopped["Status"]) == ("2/4", "stopped")
    assert resumed["Skipped images"] == "3"  # distinct files from skipped_images.txt, not the 12 read attempts
    assert "- `/data/train/7/cut.png`" in md.read_text()


@pytest.mark.slow
def test_html_has_the_grouped_chart_and_curves_labelled_by_model_and_seed(runs, tmp_path):
    _, page = report.write_report([runs], tmp_path / "out")
    text = page.read_text()
    images = text.split('src="data:image/png;base64,')[1:]
    assert len(images) == 2 + 6  # the grouped bars, every run's top-1, then each run's curves
    assert 'alt="top-1 per configuration, mean and std over seeds"' in text
    assert 'alt="validation top-1 of all runs"' in text
    assert 'alt="training curves of od_resnet18 kernel_num=4 data.name=imagenet trainer.epochs=3 seed 2"' in text
    assert "2026-12-01_00-0" not in re.sub(r"<p><code>[^<]*</code></p>", "", text)  # timestamps only in the paths
    assert all(base64.b64decode(img.split('"')[0]).startswith(b"\x89PNG\r\n\x1a\n") for img in images)
    assert "1 unreadable line(s) in metrics.jsonl skipped" in text and "<code>/data/train/9/empty.png</code>" in text
    assert "http" not in text.replace("http-equiv", "")  # nothing fetched when the page opens


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


@pytest.mark.slow
def test_report_aggregates_real_runs_of_a_seed_sweep(cache_dir, tmp_path):
    """Three seeds of each of two tiny configurations, trained by a local Hydra multirun (one job after another)."""
    proc = run_train(["-m", *TINY, "model=resnet18,resnet18_od", "trainer.seed=0,1,2", "trainer.epochs=1",
                      "trainer.limit_train_batches=2", "trainer.limit_val_batches=1", f"paths.cache_dir={cache_dir}",
                      f"paths.runs_root={tmp_path}"])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    md, page = report.write_report([tmp_path / "multirun"], tmp_path / "out")
    groups = {g["Configuration"]: g for g in tables(md.read_text())["Configurations (mean ± std over seeds)"]}
    assert sorted(groups) == ["od_resnet18 kernel_num=1 reduction=0.0625", "static_resnet18 kernel_num=0"]
    summaries = {}
    for path in (tmp_path / "multirun").glob("*/*/summary.json"):
        config = yaml.safe_load((path.parent / "config.yaml").read_text())
        summaries.setdefault(config["model"]["name"], []).append(json.loads(path.read_text()))
    for label, group in groups.items():
        seeds = summaries[label.split()[0]]
        top1 = [s["best_top1"] for s in seeds]
        assert group["n"] == "3" and len(seeds) == 3
        assert group["Top-1"] == f"{statistics.fmean(top1):.2f} ± {statistics.stdev(top1):.2f}"
        assert group["Params (M)"] == f"{seeds[0]['params'] / 1e6:.2f} ± 0.00"
        assert group["MACs (M)"] != "—" and group["Images/s"] != "—"
    runs_table = {r["Run"] for r in tables(md.read_text())["Runs"]}
    assert runs_table == {f"{label} seed {s}" for label in groups for s in range(3)}
    text = page.read_text()
    assert 'alt="top-1 per configuration, mean and std over seeds"' in text
    assert 'alt="training curves of od_resnet18 kernel_num=1 reduction=0.0625 seed 2"' in text
