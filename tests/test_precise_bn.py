"""Precise BN and batch-statistics evaluation (train/precise_bn.py): the running statistics become the plain average
of the batch statistics, also over two processes; evaluating with batch statistics changes nothing; a run with
both options trains exactly as one without and logs both evaluations."""
from __future__ import annotations

import copy
import json

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from conftest import REPO, compose_cfg
from train.config import ConfigError, validate
from train.evaluate import evaluate
from train.loop import run
from train.precise_bn import batch_statistics, recalibrate_bn


def small_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 6, 3), nn.BatchNorm2d(6), nn.ReLU(), nn.Conv2d(6, 5, 3), nn.BatchNorm2d(5),
                         nn.Dropout(0.5), nn.AdaptiveAvgPool2d(1), nn.Flatten())


def batches(n: int, seed: int = 1) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    # Different scales per batch: an average that weighs batches unequally would show.
    return [(torch.randn(4, 3, 8, 8, generator=g) * (1 + i) + i, torch.zeros(4, dtype=torch.long)) for i in range(n)]


def reference_stats(model: nn.Module, data) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per BatchNorm: the mean over batches of each batch's mean and unbiased variance of its input (float64),
    the input computed in training mode (batch statistics in the layers before)."""
    model = copy.deepcopy(model).double().train()
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    seen = {bn: [] for bn in bns}
    hooks = [bn.register_forward_pre_hook(lambda m, args: seen[m].append(args[0])) for bn in bns]
    with torch.no_grad():
        for x, _ in data:
            model(x.double())
    for h in hooks:
        h.remove()
    out = []
    for bn in bns:
        means = torch.stack([x.mean((0, 2, 3)) for x in seen[bn]])
        vars_ = torch.stack([x.var((0, 2, 3), unbiased=True) for x in seen[bn]])
        out.append((means.mean(0), vars_.mean(0)))
    return out


def no_autocast():
    return torch.autocast("cpu", enabled=False)


def test_recalibration_is_the_average_of_the_batch_statistics_and_leaves_rng_and_modes_alone():
    model = small_net().eval()
    data = batches(5)
    expected = reference_stats(model, data[:3])
    rng = torch.get_rng_state()
    used = recalibrate_bn(model, iter(data), 3, torch.device("cpu"), no_autocast)
    assert used == 3
    assert torch.equal(torch.get_rng_state(), rng)  # dropout ran in training mode, its draws were undone
    assert not any(m.training for m in model.modules())
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    for bn, (mean, var) in zip(bns, expected):
        # float32 sums of 4x6x6 values of size ~10: relative error well below 1e-5
        torch.testing.assert_close(bn.running_mean.double(), mean, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(bn.running_var.double(), var, rtol=1e-5, atol=1e-5)
        assert bn.momentum == 0.1 and bn.num_batches_tracked.item() == 3


def test_batch_statistics_evaluates_in_training_mode_batchnorm_without_changing_the_statistics():
    model = small_net()
    recalibrate_bn(model, iter(batches(2, seed=3)), 2, torch.device("cpu"), no_autocast)
    before = copy.deepcopy(model.state_dict())
    data = batches(3, seed=4)
    reference = copy.deepcopy(model).train()
    reference[5].p = 0.0  # dropout off, batch statistics on
    with torch.no_grad():
        expected = [reference(x) for x, _ in data]
    with batch_statistics(model), torch.no_grad():
        got = [model(x) for x, _ in data]
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    # and evaluate() with batch_stats=True gives the loss of those outputs
    metrics = evaluate(model, data, torch.device("cpu"), no_autocast, batch_stats=True)
    loss = sum(nn.functional.cross_entropy(o, y, reduction="sum").item() for o, (_, y) in zip(expected, data)) / 12
    assert metrics["loss"] == pytest.approx(loss, rel=1e-6)
    assert model.training and model[1].training  # the modes it had before


def _two_rank_worker(rank: int, store: str, out: str) -> None:
    dist.init_process_group("gloo", store=dist.FileStore(store, 2), rank=rank, world_size=2)
    try:
        model = small_net()
        data = batches(4)[rank * 2:rank * 2 + 2]  # each rank its own two batches
        recalibrate_bn(model, iter(data), 2, torch.device("cpu"), no_autocast)
        if rank == 0:
            torch.save({k: v for k, v in model.state_dict().items() if "running" in k}, out)
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_processes_recalibrate_to_the_average_over_all_their_batches(tmp_path):
    out = tmp_path / "stats.pt"
    mp.spawn(_two_rank_worker, args=(str(tmp_path / "store"), str(out)), nprocs=2, join=True)
    got = torch.load(out, weights_only=True)
    expected = reference_stats(small_net(), batches(4))
    for i, (mean, var) in zip((1, 4), expected):
        torch.testing.assert_close(got[f"{i}.running_mean"].double(), mean, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(got[f"{i}.running_var"].double(), var, rtol=1e-5, atol=1e-5)


def test_a_negative_number_of_recalibration_batches_is_a_config_error():
    with pytest.raises(ConfigError, match="trainer.precise_bn_batches must be >= 0, got -1"):
        validate(compose_cfg(["trainer.precise_bn_batches=-1"]))


def _records(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_a_run_with_precise_bn_trains_exactly_as_without_and_logs_both_evaluations(tiny, tmp_path):
    run(compose_cfg(tiny + [f"paths.run_dir={tmp_path / 'plain'}"]))
    run(compose_cfg(tiny + [f"paths.run_dir={tmp_path / 'precise'}", "trainer.precise_bn_batches=2",
                            "trainer.val_bn_diagnostics=true"]))
    plain, precise = _records(tmp_path / "plain"), _records(tmp_path / "precise")
    losses = lambda records: [r["loss"] for r in records if r["kind"] == "train"]  # noqa: E731
    assert losses(plain) == losses(precise)  # bit for bit: no random stream moved, training ignores the statistics
    val_plain = [r for r in plain if r["kind"] == "val"]
    val_precise = [r for r in precise if r["kind"] == "val"]
    assert len(val_precise) == 2
    # before recalibration the evaluation is the plain run's; the headline one uses the recalibrated statistics
    assert val_precise[0]["running_loss"] == pytest.approx(val_plain[0]["loss"], rel=1e-9)
    assert all({"batch_stats_loss", "batch_stats_top1", "running_top1"} <= r.keys() for r in val_precise)
    assert val_precise[0]["loss"] != val_precise[0]["running_loss"]
    saved = torch.load(tmp_path / "precise" / "checkpoints" / "last.pt", weights_only=True)
    assert saved["model"]["bn1.num_batches_tracked"].item() == 2  # the checkpoint holds the recalibrated statistics


def test_eval_modes_prints_one_row_per_epoch_with_each_mode(tmp_path, capsys):
    import importlib.util

    spec = importlib.util.spec_from_file_location("eval_modes", REPO / "scripts" / "eval_modes.py")
    eval_modes = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(eval_modes)
    records = [dict(kind="train", epoch=0, step=1, loss=2.5), dict(kind="train", epoch=0, step=2, loss=2.3),
               dict(kind="val", epoch=0, step=2, loss=2.7, top1=17.5, running_loss=173.0, running_top1=10.0,
                    batch_stats_loss=2.705, batch_stats_top1=20.28),
               dict(kind="val", epoch=1, step=4, loss=1.9, top1=32.0)]  # logged without the diagnostics
    (tmp_path / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n")
    assert eval_modes.main([str(tmp_path)]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert rows == ["| 1 | 2.400 | 17.50 / 2.700 | 10.00 / 173.000 | 20.28 / 2.705 |",
                    "| 2 | — | 32.00 / 1.900 | — | — |"]
