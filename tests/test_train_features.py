"""Loop options a cluster run relies on, checked on small real runs: gradient accumulation, mixed precision (the
dtype the training forward computes in, fp16's skipped steps), channels_last, EMA evaluation, gradient clipping (the
gradient each optimizer step applies), weight decay left off norm and bias parameters; and files given as
checkpoints that are none, refused in one line before a run directory exists."""
from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from conftest import TINY, compose_cfg, run_train
from train.config import ConfigError, validate
from train import loop
from train.loop import run
from train.optim import build_optimizer

SHORT = TINY + ["trainer.epochs=1", "trainer.limit_train_batches=2", "trainer.limit_val_batches=1"]


def weights(run_dir: Path) -> dict:
    return torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)


@pytest.mark.slow
def test_gradient_accumulation_equals_the_full_batch(cache_dir, tmp_path):
    # Frozen BatchNorm and no dropout: then 2 micro-batches of 8 must give the gradient of one batch of 16.
    common = SHORT + [f"paths.cache_dir={cache_dir}", "trainer.freeze_bn=true", "model.dropout=0"]
    run(compose_cfg(common + [f"paths.run_dir={tmp_path / 'full'}"]))
    run(compose_cfg(common + [f"paths.run_dir={tmp_path / 'accum'}", "trainer.accum_steps=2"]))
    full, accum = weights(tmp_path / "full"), weights(tmp_path / "accum")
    assert accum["step"] == full["step"] == 2
    for k, v in full["model"].items():
        torch.testing.assert_close(accum["model"][k], v, rtol=1e-4, atol=1e-6, msg=f"{k} differs")


@pytest.mark.slow
@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_mixed_precision_channels_last_ema_and_clipping_train_together_and_save_their_state(amp, cache_dir, tmp_path):
    summary = run(compose_cfg(SHORT + [
        f"paths.cache_dir={cache_dir}", f"paths.run_dir={tmp_path}", f"trainer.amp={amp}", "trainer.channels_last=true",
        "trainer.ema=true", "optim.clip_grad_norm=1.0", "optim.wd_exclude_norm_bias=true"]))
    assert summary["status"] == "completed" and summary["step"] == 2
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r.get("ema", False) for r in records if r["kind"] == "val"] == [False, True]
    ck = weights(tmp_path)
    assert ck["ema"] is not None and ck["config"]["optim"]["clip_grad_norm"] == 1.0
    assert ck["model"]["conv1.weight"].is_contiguous(memory_format=torch.channels_last)  # the layout trained in
    assert ck["scaler"] if amp == "fp16" else not ck["scaler"]  # fp16's GradScaler state is saved for resume


@pytest.fixture
def probe(monkeypatch):
    """Watches the model and the optimizer that the real loop builds (its builders wrapped, nothing else changed):
    the dtype of every convolution and linear output in training mode, and at each optimizer step, just before the
    update, the gradients it applies and the weights it applies them to."""
    seen = SimpleNamespace(model=None, initial=None, train_dtypes=set(), grads=[], weights=[])
    build_model, build_optimizer_ = loop.build_model, loop.build_optimizer

    def record_dtype(module, inputs, output):
        if module.training:
            seen.train_dtypes.add(output.dtype)

    def watched_model(c, num_classes):
        seen.model = build_model(c, num_classes)
        seen.initial = {n: p.detach().clone() for n, p in seen.model.named_parameters()}
        for m in seen.model.modules():
            if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
                m.register_forward_hook(record_dtype)
        return seen.model

    def before_step(optimizer, args, kwargs):
        named = list(seen.model.named_parameters())
        seen.grads.append(torch.cat([p.grad.detach().double().flatten() for _, p in named]))
        seen.weights.append({n: p.detach().clone() for n, p in named})

    def watched_optimizer(model, c):
        optimizer = build_optimizer_(model, c)
        optimizer.register_step_pre_hook(before_step)
        return optimizer

    monkeypatch.setattr(loop, "build_model", watched_model)
    monkeypatch.setattr(loop, "build_optimizer", watched_optimizer)
    return seen


class GradScalerFrom256(torch.amp.GradScaler):
    """fp16's GradScaler starting at 2**8 instead of 2**16. At 2**16 the tiny run's first gradients overflow fp16
    by themselves (so its first step is skipped, as it would be in a real run); from 2**8 every step runs unless a
    test makes a gradient overflow, so a test decides which step is skipped."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, init_scale=2.0 ** 8, **kwargs)


@pytest.fixture
def scale_from_256(monkeypatch):
    monkeypatch.setattr(torch.amp, "GradScaler", GradScalerFrom256)


@pytest.mark.slow
@pytest.mark.parametrize("amp", ["none", "fp16"])
def test_clipping_rescales_each_steps_gradient_to_the_clip_norm(amp, probe, scale_from_256, cache_dir, tmp_path):
    # The same seed, data and initial weights with and without clipping: the first step's raw gradient is the same
    # in both runs, so the clipped run must apply exactly that gradient times clip / ||raw||. Under fp16 this also
    # needs the GradScaler's unscale before the clip: clipping the scaled gradient would leave 1/256 of it.
    clip = 0.01
    common = SHORT + [f"paths.cache_dir={cache_dir}", f"trainer.amp={amp}"]
    run(compose_cfg(common + [f"paths.run_dir={tmp_path / 'raw'}", "trainer.limit_train_batches=1"]))
    (raw,) = probe.grads
    probe.grads.clear()
    run(compose_cfg(common + [f"paths.run_dir={tmp_path / 'clipped'}", f"optim.clip_grad_norm={clip}"]))
    assert len(probe.grads) == 2  # both optimizer steps ran (no fp16 overflow skipped one)
    raw_norm = torch.linalg.vector_norm(raw).item()
    # The log records the norm before clipping (the unscaled one under fp16): what tells a user the clip is active.
    logged = [r for r in map(json.loads, (tmp_path / "raw" / "metrics.jsonl").read_text().splitlines())
              if r["kind"] == "train"]
    assert [r["grad_norm"] for r in logged] == [pytest.approx(raw_norm, rel=1e-5)]
    clipped = [r for r in map(json.loads, (tmp_path / "clipped" / "metrics.jsonl").read_text().splitlines())
               if r["kind"] == "train"]
    assert clipped[0]["grad_norm"] == pytest.approx(raw_norm, rel=1e-5)  # step 1 is the raw run's step 1
    assert raw_norm > 10 * clip  # so the bound below is not met by the raw gradient
    for grads in probe.grads:  # every step's applied gradient has the clip norm (up to float32 rounding)
        assert torch.linalg.vector_norm(grads).item() == pytest.approx(clip, rel=1e-5)
    torch.testing.assert_close(probe.grads[0], raw * (clip / (raw_norm + 1e-6)), rtol=1e-5, atol=1e-12)


@pytest.mark.slow
@pytest.mark.parametrize("amp,dtype", [("none", torch.float32), ("bf16", torch.bfloat16), ("fp16", torch.float16)])
def test_amp_runs_the_training_forward_in_its_dtype(amp, dtype, probe, cache_dir, tmp_path):
    run(compose_cfg(SHORT + [f"paths.cache_dir={cache_dir}", f"paths.run_dir={tmp_path}", f"trainer.amp={amp}",
                             "trainer.limit_train_batches=1"]))
    assert probe.train_dtypes == {dtype}  # every convolution and the classifier, in the one training step
    assert probe.model.conv1.weight.dtype == torch.float32  # autocast computes in low precision, keeps fp32 weights


@pytest.mark.slow
def test_fp16_skips_the_step_whose_gradient_overflows_and_halves_the_scale(probe, scale_from_256, cache_dir, tmp_path,
                                                                          monkeypatch):
    # An inf in one gradient of the first step (what an fp16 overflow makes), the loss itself finite: the GradScaler
    # must skip that update and halve its scale; the second step trains normally.
    watched_model = loop.build_model

    def overflowing_model(c, num_classes):
        model = watched_model(c, num_classes)
        calls = []

        def overflow_once(grad):
            calls.append(1)
            return grad * float("inf") if len(calls) == 1 else grad
        model.conv1.weight.register_hook(overflow_once)
        return model

    monkeypatch.setattr(loop, "build_model", overflowing_model)
    summary = run(compose_cfg(SHORT + [f"paths.cache_dir={cache_dir}", f"paths.run_dir={tmp_path}",
                                       "trainer.amp=fp16"]))
    assert summary["status"] == "completed" and summary["step"] == 2  # a skipped step is no failed run
    assert len(probe.weights) == 1  # only the second step reached the optimizer
    for name, w in probe.weights[0].items():  # the weights the second step starts from: untouched by the first
        assert torch.equal(w, probe.initial[name]), name
    ck = weights(tmp_path)
    assert ck["scaler"]["scale"] == 2.0 ** 8 * 0.5  # init_scale times backoff_factor, once
    assert not torch.equal(ck["model"]["conv1.weight"], probe.initial["conv1.weight"])  # the second step did train


def test_weight_decay_can_exclude_norm_and_bias():
    import models  # noqa: F401
    import timm

    c = validate(compose_cfg(["optim.wd_exclude_norm_bias=true"]))
    model = timm.create_model("od_resnet18", num_classes=10, kernel_num=1)
    groups = build_optimizer(model, c).param_groups
    assert c.optim.weight_decay > 0 and sorted(g["weight_decay"] for g in groups) == [0.0, c.optim.weight_decay]
    decay, no_decay = (next(g["params"] for g in groups if g["weight_decay"] == wd) for wd in (c.optim.weight_decay, 0))
    assert all(p.ndim > 1 for p in decay) and all(p.ndim <= 1 for p in no_decay)
    assert len(decay) + len(no_decay) == len(list(model.parameters()))
    bn = model.bn1  # the stem's BatchNorm: both its scale and shift are left without decay
    assert any(p is bn.weight for p in no_decay) and any(p is bn.bias for p in no_decay)
    default = build_optimizer(model, validate(compose_cfg([]))).param_groups  # the paper recipe decays everything
    assert len(default) == 1 and len(default[0]["params"]) == len(list(model.parameters()))


class NotTensors:
    """Pickled by torch.save inside a checkpoint: a weights-only load must refuse it."""


@pytest.fixture
def not_checkpoints(tmp_path) -> dict:
    garbage, pickled = tmp_path / "garbage.pt", tmp_path / "pickled.pt"
    garbage.write_text("these bytes are not a checkpoint\n")
    torch.save({"model": NotTensors()}, pickled)
    return dict(garbage=garbage, pickled=pickled, missing=tmp_path / "missing.pt")


@pytest.mark.parametrize("key", ["checkpoint", "model.init_checkpoint"])
def test_a_file_that_is_not_a_checkpoint_is_one_line_naming_key_and_path(key, not_checkpoints, tiny, tmp_path):
    mode = ["mode=eval"] if key == "checkpoint" else []
    expected = {
        "garbage": "is not a readable PyTorch checkpoint (not written by torch.save, or truncated)",
        "pickled": "is not a readable PyTorch checkpoint: it holds Python objects besides tensors and plain containers",
        "missing": "not found" if key == "model.init_checkpoint" else "does not exist",
    }
    for name, path in not_checkpoints.items():
        with pytest.raises(ConfigError) as info:
            run(compose_cfg(tiny + mode + [f"{key}={path}"]))
        message = str(info.value)
        assert message.startswith(key) and str(path) in message and expected[name] in message, message
        assert "\n" not in message and "weights_only" not in message  # never the advice to load unsafely
    assert not (tmp_path / "runs").exists()  # checked before the run directory is made


@pytest.mark.slow
def test_cli_exits_2_with_one_line_and_no_run_directory_for_a_bad_init_checkpoint(not_checkpoints, cache_dir,
                                                                                  tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    proc = run_train(TINY + [f"paths.cache_dir={cache_dir}", f"model.init_checkpoint={not_checkpoints['garbage']}"],
                     cwd=work)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.strip() == (f"error: model.init_checkpoint: {not_checkpoints['garbage']} is not a readable "
                                   "PyTorch checkpoint (not written by torch.save, or truncated)")
    assert list(work.iterdir()) == []  # neither runs/ nor Hydra's outputs/
