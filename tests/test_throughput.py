"""The throughput benchmark on tiny settings: its table has one row per model and per worker setting (no timings)."""
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import throughput  # noqa: E402


def test_benchmark_prints_one_consistent_row_per_measurement(tmp_path, capsys):
    threads = torch.get_num_threads()
    try:
        code = throughput.main(["--threads", "1", "--models", "static_resnet18", "od_resnet18:2", "--batch-size", "2",
                                "--img-size", "32", "--steps", "1", "--warmup", "0", "--data", "demo",
                                "--data-root", str(tmp_path / "digits"), "--workers", "0", "1",
                                "--data-batches", "2"])
    finally:
        torch.set_num_threads(threads)
    assert code == 0
    table = capsys.readouterr().out.split("\n\n")[-1].splitlines()
    assert table[0] == "| what | setting | batch | img | batches | images/s | ms/batch |"
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in table[2:]]
    assert [(r[0], r[1].split(" (")[0]) for r in rows] == [
        ("train step", "static_resnet18 k=-"), ("train step", "od_resnet18 k=2"),
        ("data pipeline", "demo, 0 workers"), ("data pipeline", "demo, 1 workers")]
    assert [r[4] for r in rows] == ["1", "1", "2", "2"]
    for r in rows:  # images/s and ms/batch describe the same measurement: images/s = batch * 1000 / ms
        batch, rate, ms = int(r[2]), float(r[5]), float(r[6])
        rounding = 0.05 + ms * 0.05 / rate  # both columns are printed to 0.1
        assert abs(batch * 1000 / rate - ms) <= rounding, r


def test_benchmark_errors_are_one_line(tmp_path, capsys):
    assert throughput.main(["--models", "none", "--data", "folder", "--data-root", str(tmp_path / "nope")]) == 2
    assert capsys.readouterr().err.startswith(f"error: Dataset root {tmp_path / 'nope'} does not exist")
    assert throughput.main(["--models", "od_resnet18:x", "--data", "none"]) == 2


def test_a_dynamic_model_trains_in_channels_last():
    # Module.to(memory_format=channels_last) raises for the stacked 5-D kernels of ODConv (K, O, I, kh, kw).
    row = throughput.train_step_rate("od_resnet18:4", batch_size=2, img_size=32, steps=1, warmup=0,
                                     device=torch.device("cpu"), amp="none", channels_last=True, num_classes=10)
    assert row["images_per_s"] > 0, row
