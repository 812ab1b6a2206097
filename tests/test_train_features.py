"""Loop options a cluster run relies on, checked on small real runs: gradient accumulation, mixed precision,
channels_last, EMA evaluation, gradient clipping, and weight decay left off norm and bias parameters."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import TINY, compose_cfg
from train.config import validate
from train.loop import run
from train.optim import build_optimizer

SHORT = TINY + ["trainer.epochs=1", "trainer.limit_train_batches=2", "trainer.limit_val_batches=1"]


def weights(run_dir: Path) -> dict:
    return torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)


def test_gradient_accumulation_equals_the_full_batch(cache_dir, tmp_path):
    # Frozen BatchNorm and no dropout: then 2 micro-batches of 8 must give the gradient of one batch of 16.
    common = SHORT + [f"paths.cache_dir={cache_dir}", "trainer.freeze_bn=true", "model.dropout=0"]
    run(compose_cfg(common + [f"paths.run_dir={tmp_path / 'full'}"]))
    run(compose_cfg(common + [f"paths.run_dir={tmp_path / 'accum'}", "trainer.accum_steps=2"]))
    full, accum = weights(tmp_path / "full"), weights(tmp_path / "accum")
    assert accum["step"] == full["step"] == 2
    for k, v in full["model"].items():
        torch.testing.assert_close(accum["model"][k], v, rtol=1e-4, atol=1e-6, msg=f"{k} differs")


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_mixed_precision_channels_last_ema_and_clipping_train(amp, cache_dir, tmp_path):
    summary = run(compose_cfg(SHORT + [
        f"paths.cache_dir={cache_dir}", f"paths.run_dir={tmp_path}", f"trainer.amp={amp}", "trainer.channels_last=true",
        "trainer.ema=true", "optim.clip_grad_norm=1.0", "optim.wd_exclude_norm_bias=true"]))
    assert summary["status"] == "completed" and summary["step"] == 2
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r.get("ema", False) for r in records if r["kind"] == "val"] == [False, True]
    ck = weights(tmp_path)
    assert ck["ema"] is not None
    assert ck["scaler"] if amp == "fp16" else not ck["scaler"]  # fp16's GradScaler state is saved for resume


def test_weight_decay_can_exclude_norm_and_bias():
    import models  # noqa: F401
    import timm

    c = validate(compose_cfg(["optim.wd_exclude_norm_bias=true"]))
    model = timm.create_model("od_resnet18", num_classes=10, kernel_num=1)
    decay, no_decay = build_optimizer(model, c).param_groups
    assert decay["weight_decay"] == c.optim.weight_decay and no_decay["weight_decay"] == 0.0
    assert all(p.ndim > 1 for p in decay["params"]) and all(p.ndim <= 1 for p in no_decay["params"])
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))
