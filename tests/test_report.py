"""The results dashboard on run directories written as the training engine writes them."""
import base64
import json
import sys
from pathlib import Path

import pytest
import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))
import report  # noqa: E402


def write_run(run_dir: Path, *, model: str, kernel_num: int, data: str, epochs: int, val_top1: list[float],
              summary: dict | None = None, ema_top1: list[float] | None = None, cut_last_line: bool = False):
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(
        {"model": {"name": model, "kernel_num": kernel_num}, "data": {"name": data}, "trainer": {"epochs": epochs}}))
    lines = []
    for epoch, top1 in enumerate(val_top1):
        for step in range(epoch * 10, epoch * 10 + 10, 5):
            lines.append(dict(kind="train", epoch=epoch, step=step, loss=2.0 / (step + 1), lr=0.1, temperature=1.0,
                              images_per_s=100.0, time=0.0))
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


@pytest.fixture
def runs(tmp_path):
    root = tmp_path / "runs"
    write_run(root / "r18_od4x", model="od_resnet18", kernel_num=4, data="imagenet", epochs=3,
              val_top1=[40.0, 70.5, 74.02],
              summary=dict(model="od_resnet18", kernel_num=4, params=44_900_000, best_top1=74.02, best_top5=91.6,
                           final_top1=74.02, final_top5=91.6, epochs=3, global_batch_size=256, status="finished"))
    write_run(root / "r50_static", model="static_resnet50", kernel_num=0, data="imagenet", epochs=2,
              val_top1=[60.0, 77.0], ema_top1=[61.0, 77.5],
              summary=dict(model="static_resnet50", kernel_num=0, params=25_557_032, best_top1=77.0, best_top5=93.1,
                           final_top1=77.0, final_top5=93.1, epochs=2, global_batch_size=256, status="finished"))
    # An unfinished demo run whose process died mid-line and which was resumed: duplicated records for epoch 1.
    write_run(root / "demo", model="od_resnet18", kernel_num=1, data="demo", epochs=5, val_top1=[50.0, 81.25],
              cut_last_line=True)
    with open(root / "demo" / "metrics.jsonl", "a") as f:
        f.write("\n" + json.dumps(dict(kind="val", epoch=1, step=20, loss=0.5, top1=82.5, top5=99.0, time=1.0)) + "\n")
        f.write(json.dumps(dict(kind="train", epoch=1, step=25, loss=0.1, lr=0.1, skipped_images=3, time=2.0)) + "\n")
    (root / "demo" / ".hydra").mkdir()
    (root / "demo" / ".hydra" / "config.yaml").write_text("not: a run\n")
    return root


def table(md: str) -> dict[str, dict[str, str]]:
    lines = [line for line in md.splitlines() if line.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    rows = [dict(zip(header, (c.strip() for c in line.strip("|").split("|")))) for line in lines[2:]]
    return {row["Run"]: row for row in rows}


def test_table_puts_runs_beside_their_paper_rows(runs, tmp_path):
    md, page = report.write_report([runs], tmp_path / "out")
    rows = table(md.read_text())
    assert sorted(rows) == ["demo", "r18_od4x", "r50_static"]  # .hydra/ is not a run
    od = rows["r18_od4x"]
    assert (od["Model"], od["K"], od["Top-1"], od["Top-5"], od["Params (M)"]) == \
        ("od_resnet18", "4", "74.02", "91.60", "44.90")
    assert (od["Paper row"], od["Paper top-1"], od["Paper top-5"], od["Paper MACs (M)"]) == \
        ("ResNet18 + ODConv (4x)", "74.19", "91.47", "1916.0")
    assert od["Δ top-1"] == "-0.17" and od["Status"] == "finished" and od["Epochs"] == "3/3"
    static = rows["r50_static"]
    assert (static["K"], static["Paper row"], static["Paper top-1"], static["EMA top-1"]) == \
        ("static", "ResNet50", "76.23", "77.50")
    demo = rows["demo"]  # no summary yet: read from the metrics; the resumed epoch's later record wins
    assert (demo["Top-1"], demo["Status"], demo["Epochs"], demo["Paper row"], demo["Δ top-1"]) == \
        ("82.50", "running", "2/5", "—", "—")
    assert (demo["Skipped images"], od["Skipped images"]) == ("3", "0")


def test_html_is_self_contained_with_one_curve_image_per_run(runs, tmp_path):
    _, page = report.write_report([runs / "demo", runs / "r18_od4x"], tmp_path / "out")
    text = page.read_text()
    images = text.split('src="data:image/png;base64,')[1:]
    assert len(images) == 3  # the runs' top-1 side by side, then each run's curves
    assert 'alt="validation top-1 of all runs"' in text and 'alt="training curves of r18_od4x"' in text
    assert all(base64.b64decode(img.split('"')[0]).startswith(b"\x89PNG\r\n\x1a\n") for img in images)
    assert "ResNet18 + ODConv (4x)" in text and "1 unreadable line(s) in metrics.jsonl skipped" in text
    assert "http" not in text.replace("http-equiv", "")  # nothing fetched when the page opens


def test_cli_writes_both_files_and_bad_paths_give_one_line_errors(runs, tmp_path, capsys):
    out = tmp_path / "out"
    assert report.main([str(runs / "r18_od4x"), "--out", str(out)]) == 0
    assert "| r18_od4x | od_resnet18 | 4 |" in capsys.readouterr().out
    assert (out / "results.md").is_file() and (out / "results.html").is_file()
    missing = tmp_path / "no_such_run"
    assert report.main([str(missing), "--out", str(out)]) == 2
    assert capsys.readouterr().err == f"error: Run directory {missing} does not exist.\n"
    (tmp_path / "empty").mkdir()
    with pytest.raises(report.ReportError, match="is not a run directory"):
        report.write_report([tmp_path / "empty"], out)
    with pytest.raises(report.ReportError, match=f"{missing} does not exist"):
        report.find_runs([missing])


def test_report_on_a_real_training_run(tmp_path, capsys):
    """One real (tiny) run of the training engine, labelled as ImageNet so it meets its paper row."""
    from PIL import Image
    from hydra import compose, initialize_config_dir

    from train.config import register
    from train.loop import run

    for split, per_class in (("train", 4), ("val", 2)):
        for cls in range(3):
            (tmp_path / "data" / split / str(cls)).mkdir(parents=True)
            for i in range(per_class):
                Image.new("RGB", (32, 32), (80 * cls, 40 * i, 90)).save(tmp_path / "data" / split / str(cls) / f"{i}.png")
    register()
    with initialize_config_dir(str(REPO / "configs"), version_base="1.3"):
        cfg = compose("train", overrides=[
            "trainer.epochs=1", "trainer.limit_train_batches=1", "data.global_batch_size=4", "data.workers=0",
            "data.format=folder", f"data.root={tmp_path / 'data'}", "data.name=imagenet",
            f"paths.run_dir={tmp_path / 'run'}"])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: one thread is faster, and immune to a busy machine's other jobs
    try:
        run(cfg)
    finally:
        torch.set_num_threads(threads)
    md, _ = report.write_report([tmp_path / "run"], tmp_path / "out")
    row = table(md.read_text())["run"]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert row["Model"] == cfg.model.name and row["K"] == str(cfg.model.kernel_num)
    assert row["Top-1"] == f"{summary['best_top1']:.2f}" and row["Epochs"] == "1/1"
    assert row["Params (M)"] == f"{summary['params'] / 1e6:.2f}"
    paper = report._paper_row(report.load_run(tmp_path / "run"))
    assert paper is not None and row["Paper top-1"] == f"{paper.top1:.2f}"
