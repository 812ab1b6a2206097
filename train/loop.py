"""The training loop: `run(cfg)` sets a run up, then alternates `train_one_epoch` and `evaluate`.

train.py hands the composed Hydra config to `run`; tests call `run` directly. Order of a run: validate the config,
join the process group, build data and model (so that their errors come before a run directory exists), pick the run
directory, resume from checkpoints/last.pt if it has one, train, write summary.json (and skipped_images.txt when
images were unreadable, see `train.skipped`).
"""
from __future__ import annotations

import contextlib
import math
import os
import random
import sys
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from omegaconf import OmegaConf
from timm.utils import ModelEmaV3
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from odconv import set_dispatch, set_temperature, temperature_schedule, tuning
from models import count_params
from odconv.dispatch import measures, use_formulation

from . import checkpoint as ckpt_lib
from . import distributed
from .builders import Loaders, build_loaders, build_model, resolve_run_dir, to_channels_last
from .config import MODEL_KWARGS, ConfigError, TrainConfig, model_family, validate
from .distributed import DistInfo
from .evaluate import autocast, evaluate, evaluate_checkpoint
from .loss import build_criterion
from .mixup import build_mixup, ramp_mixup
from .optim import build_optimizer, build_scheduler, set_schedule_position
from .precise_bn import recalibrate_bn
from .runlog import RunLogger
from .signals import StopRequest
from .skipped import SkipReport


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the last checkpoint on disk is the last good state."""


@dataclass
class State:
    """Where the run is; with the RNG states this is everything besides the tensors that resume needs."""
    epoch: int = 0  # epoch in progress, 0-based
    batch: int = 0  # optimizer steps done in that epoch
    step: int = 0  # optimizer steps done in the run
    best_top1: float = -1.0
    best_top5: float = -1.0
    last_val: dict = field(default_factory=dict)
    wandb_id: str | None = None


@dataclass
class Ctx:
    c: TrainConfig
    di: DistInfo
    model: nn.Module  # the plain module: what is saved, evaluated and annealed
    net: nn.Module  # what the training step calls: DDP and/or torch.compile around `model`
    ema: ModelEmaV3 | None
    optimizer: torch.optim.Optimizer
    sched: object
    scaler: torch.amp.GradScaler
    criterion: nn.Module
    mixup: object
    loaders: Loaders
    log: RunLogger
    ckpts: ckpt_lib.CheckpointDir | None
    stop: StopRequest | None
    skips: SkipReport

    def autocast(self):
        return autocast(self.c, self.di.device)

    def temperature(self, step: int) -> float:
        m = self.c.model
        return temperature_schedule(step + 1, self.loaders.steps_per_epoch, m.temperature_init, m.temperature_epochs,
                                    m.temperature_end, m.temperature_shape)


def run(cfg) -> dict:
    """Train (or evaluate, mode=eval) as the config says; returns summary.json's content (eval: the metrics)."""
    distributed.export_launcher_env()
    c = validate(cfg, world_size=int(os.environ.get("WORLD_SIZE", "1")))
    di = distributed.init(c.trainer.device)
    threads = torch.get_num_threads()
    dispatch = set_dispatch(c.trainer.odconv_dispatch)
    try:
        if c.trainer.threads:
            torch.set_num_threads(c.trainer.threads)
        _seed_everything(c.trainer.seed, c.trainer.deterministic)
        forced = c.trainer.odconv_formulation
        with use_formulation(forced) if forced else contextlib.nullcontext():
            return evaluate_checkpoint(c, di) if c.mode == "eval" else _train(c, di)
    finally:
        torch.set_num_threads(threads)  # tests call run() repeatedly in one process
        set_dispatch(dispatch)
        distributed.shutdown()


def _seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # the same on every rank: DDP also broadcasts rank 0's weights, this keeps EMA equal
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False


def _setup_model(c: TrainConfig, di: DistInfo, num_classes: int):
    model = build_model(c, num_classes)
    if c.trainer.sync_bn and di.world_size > 1:
        if di.device.type != "cuda":
            raise ConfigError("trainer.sync_bn needs CUDA: torch's SyncBatchNorm has no CPU implementation")
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model = model.to(di.device)
    if c.trainer.channels_last:
        model = to_channels_last(model)
    ema = ModelEmaV3(model, decay=c.trainer.ema_decay) if c.trainer.ema else None
    return model, ema


def _train(c: TrainConfig, di: DistInfo) -> dict:
    # Data and model first: a missing dataset or a bad model.init_checkpoint must stop before a directory exists.
    loaders = build_loaders(c, di)
    model, ema = _setup_model(c, di, loaders.num_classes)
    run_dir = resolve_run_dir(c, di)
    log = RunLogger(run_dir, di.is_main, c.trainer.progress)
    torch.manual_seed(c.trainer.seed + di.rank)  # dropout masks differ between ranks, as their images do
    optimizer = build_optimizer(model, c)
    mixup = build_mixup(loaders.num_classes, mixup_alpha=c.data.mixup, cutmix_alpha=c.data.cutmix,
                                 label_smoothing=c.data.label_smoothing)
    ctx = Ctx(
        c, di, model, model, ema, optimizer, build_scheduler(optimizer, c, loaders.steps_per_epoch),
        torch.amp.GradScaler(di.device.type, enabled=c.trainer.amp == "fp16"),
        build_criterion(mixup=mixup is not None, label_smoothing=c.data.label_smoothing),
        mixup, loaders, log, ckpt_lib.CheckpointDir(run_dir, c.trainer.keep_last), None,
        SkipReport([loaders.train_dataset, loaders.val.dataset], di.device, di.is_main, run_dir))
    # Rank 0 decides; every rank must then read the same file, so the run directory has to be shared between nodes.
    resume = distributed.broadcast_object(ctx.ckpts.last.is_file())
    if resume and distributed.all_reduce_sum([float(not ctx.ckpts.last.is_file())], di.device)[0]:
        raise ConfigError(f"{ctx.ckpts.last} is not visible on every node: put paths.run_dir on a shared filesystem")
    if not resume:
        log.start_fresh()
    state = _resume(ctx) if resume else State()
    if di.world_size > 1:
        ctx.net = DistributedDataParallel(model, device_ids=[di.local_rank] if di.device.type == "cuda" else None)
    if c.trainer.compile:
        ctx.net = torch.compile(ctx.net)
    resolved = OmegaConf.to_container(OmegaConf.structured(c))
    log.write_config(OmegaConf.to_yaml(resolved))
    state.wandb_id = distributed.broadcast_object(log.start_dashboards(c.logger, state.wandb_id, resolved,
                                                                       run_dir.name))
    params = count_params(model)
    settings = "".join(f" {k}={getattr(c.model, k)}" for k in MODEL_KWARGS.get(model_family(c.model.name), ())
                       if getattr(c.model, k) is not None)  # the family's own keys the config sets (kw_ratio, ...)
    log.info(f"run dir {run_dir} | {c.model.name}{settings} params={params / 1e6:.2f}M | "
             f"{di.world_size} process(es) on {di.device.type} | global batch {c.data.global_batch_size}, "
             f"{loaders.steps_per_epoch} steps/epoch, lr {optimizer.param_groups[0]['lr']:.4g}")
    if measures(di.device.type) and state.epoch < c.trainer.epochs:
        _tune_dispatch(ctx, state.epoch)
    status = "completed"
    ctx.stop = StopRequest()
    try:
        while state.epoch < c.trainer.epochs:
            reason = train_one_epoch(ctx, state)
            if reason:
                _save(ctx, state, epoch_end=False)
                log.info(f"stopped by {reason} at epoch {state.epoch + 1} step {state.step}; checkpoint saved to "
                         f"{ctx.ckpts.last}; run the same command with paths.run_dir={run_dir} to resume")
                status = "preempted"
                break
            state.epoch, state.batch = state.epoch + 1, 0
            is_best = False
            if state.epoch % c.trainer.eval_every == 0 or state.epoch == c.trainer.epochs:
                is_best = _validate(ctx, state)
            ctx.skips.update()  # the validation set's unreadable files too, before the summary counts them
            _save(ctx, state, epoch_end=True, is_best=is_best)
    except NonFiniteLossError as e:
        status = "failed"
        log.error(str(e))
        raise
    except Exception as e:
        status = "failed"
        _report_failure(ctx, state, e)
        raise
    except BaseException:
        status = "failed"
        raise
    finally:
        summary = _summary(c, state, params, status, ctx.skips.count)
        log.write_summary(summary)
        log.close()
        ctx.stop.restore()
    if status == "completed":
        log.info(f"done: best top-1 {state.best_top1:.2f}% top-5 {state.best_top5:.2f}% | final top-1 "
                 f"{summary['final_top1']:.2f}% top-5 {summary['final_top5']:.2f}% | {run_dir}")
        if ctx.skips.count:
            log.info(f"{ctx.skips.count} unreadable image(s) skipped, listed in {ctx.skips.path}")
    else:
        ctx.stop.chain()  # under submitit: its own handler requeues the job
    return summary


def _report_failure(ctx: Ctx, state: State, error: Exception) -> None:
    """One line from every rank that stops on an error. When one rank of a job dies (killed, its node lost), the
    others fail in their next collective; their line, in the job's log, says so and where to resume from (a multirun
    job's traceback goes to Hydra's result, not to the log)."""
    if isinstance(error, ConfigError):
        return  # a user's mistake: train.py prints its one line
    last = ctx.ckpts.last
    saved = f"the last checkpoint, {last}, is intact" if last.is_file() else "no checkpoint was written yet"
    first_line = (str(error).strip().splitlines() or [""])[0]
    print(f"error: rank {ctx.di.rank} of {ctx.di.world_size} stopped at epoch {state.epoch + 1} step {state.step} by "
          f"{type(error).__name__}: {first_line}; {saved}; run the same command with the same run directory to "
          f"resume", file=sys.stderr, flush=True)


def train_one_epoch(ctx: Ctx, state: State) -> str | None:
    """Train from the current position to the end of the epoch; returns why it stopped early, or None."""
    c, t = ctx.c, ctx.c.trainer
    accum, steps = t.accum_steps, ctx.loaders.steps_per_epoch
    batches = _epoch_batches(ctx, state)
    set_schedule_position(ctx.sched, state.epoch, state.step)
    if ctx.mixup is not None:
        ramp_mixup(ctx.mixup, c.data.mixup, state.epoch, c.data.mixup_ramp_epochs)
    ctx.net.train()
    if t.freeze_bn:
        for m in ctx.model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()
    window_start, window_loss, window_steps = time.perf_counter(), 0.0, 0
    window_grad = torch.zeros((), device=ctx.di.device)  # the largest global gradient norm of the window
    while state.batch < steps:
        temperature = ctx.temperature(state.step)
        set_temperature(ctx.model, temperature)
        loss_sum = torch.zeros((), device=ctx.di.device)
        for micro in range(accum):
            x, y = next(batches)
            x, y = x.to(ctx.di.device, non_blocking=True), y.to(ctx.di.device, non_blocking=True)
            if t.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            if ctx.mixup is not None:
                x, y = ctx.mixup(x, y)
            # Gradients are all-reduced once per optimizer step, on the last micro-batch.
            sync = micro == accum - 1 or not isinstance(ctx.net, DistributedDataParallel)
            with contextlib.nullcontext() if sync else ctx.net.no_sync():
                with ctx.autocast():
                    loss = ctx.criterion(ctx.net(x), y)
                ctx.scaler.scale(loss / accum).backward()
            loss_sum += loss.detach().float()
        # One all-reduce per step carries the loss, a non-finite flag and a stop request from any rank.
        bad = (~torch.isfinite(loss_sum)).float()
        signalled = float(ctx.stop.requested)
        total, n_bad, n_signal = distributed.all_reduce_sum([loss_sum.item() / accum, bad.item(), signalled],
                                                            ctx.di.device)
        if n_bad and not ctx.scaler.is_enabled():
            ctx.optimizer.zero_grad(set_to_none=True)
            raise NonFiniteLossError(
                f"loss is {total / ctx.di.world_size} at epoch {state.epoch + 1} step {state.step + 1}; stopped "
                f"without saving, {ctx.ckpts.last} holds the last good state (lower optim.lr, set "
                "optim.clip_grad_norm, or use trainer.amp=fp16 to skip such steps)")
        if t.amp == "fp16":
            ctx.scaler.unscale_(ctx.optimizer)  # the norm below, and clipping, see the true gradients
        # The global norm before clipping, logged: a spike in it is how an unstable run shows itself first (the
        # KernelWarehouse proxy rows collapsed after their norm rose a thousandfold as tau left the blend).
        params = [p for p in ctx.model.parameters() if p.grad is not None]
        grad_norm = torch.nn.utils.get_total_norm([p.grad for p in params])
        if c.optim.clip_grad_norm:
            torch.nn.utils.clip_grads_with_norm_(params, c.optim.clip_grad_norm, grad_norm)
        window_grad = torch.maximum(window_grad, grad_norm.detach().float())
        ctx.scaler.step(ctx.optimizer)  # under fp16 skips the update when a gradient is inf/NaN
        ctx.scaler.update()
        ctx.optimizer.zero_grad(set_to_none=True)
        if ctx.ema is not None:
            ctx.ema.update(ctx.model, step=state.step)
        state.step, state.batch = state.step + 1, state.batch + 1
        if ctx.sched is not None:
            ctx.sched.step_update(state.step)
        window_loss, window_steps = window_loss + total / ctx.di.world_size, window_steps + 1
        if state.step % t.log_every == 0 or state.batch == steps:
            elapsed = time.perf_counter() - window_start
            rate = window_steps * c.data.global_batch_size / max(elapsed, 1e-9)
            lr = ctx.optimizer.param_groups[0]["lr"]
            left = (t.epochs - state.epoch - 1) * steps + steps - state.batch
            record = dict(kind="train", epoch=state.epoch, step=state.step, loss=window_loss / window_steps, lr=lr,
                          temperature=temperature, images_per_s=rate, skipped_images=ctx.skips.update(),
                          grad_norm=window_grad.item())
            ctx.log.log(record)
            ctx.log.train_line(epoch=state.epoch, epochs=t.epochs, batch=state.batch, batches=steps,
                               loss=record["loss"], lr=lr, temperature=temperature, images_per_s=rate,
                               eta_s=left * elapsed / window_steps)
            window_start, window_loss, window_steps = time.perf_counter(), 0.0, 0
            window_grad.zero_()
        if n_signal:
            return ctx.stop.name or "a signal on another rank"
        if t.stop_after_steps and state.step >= t.stop_after_steps:
            return f"trainer.stop_after_steps={t.stop_after_steps}"
        if t.save_every_steps and state.step % t.save_every_steps == 0 and state.batch < steps:
            _save(ctx, state, epoch_end=False)
    return None


def _tune_dispatch(ctx: Ctx, epoch: int) -> None:
    """Measured ODConv dispatch: rank 0 times the formulations on one real batch in eager mode (torch.compile
    must not trace the timing), then every rank takes rank 0's choices, so all ranks compute the same way."""
    if ctx.di.is_main:
        rng = ckpt_lib.rng_state()  # drawing this batch must not change the run's random streams
        x = next(_epoch_batches(ctx, State(epoch)))[0].to(ctx.di.device)  # the epoch's first: no skipping
        ckpt_lib.set_rng_state(rng)
        with ctx.autocast():
            tuning.tune(ctx.model, x.contiguous(memory_format=torch.channels_last) if ctx.c.trainer.channels_last
                        else x, training=True)
    tuning.share_choices()


def _epoch_batches(ctx: Ctx, state: State):
    """Iterator over the epoch's remaining micro-batches, starting where the checkpoint left off."""
    loaders, skip = ctx.loaders, state.batch * ctx.c.trainer.accum_steps
    if loaders.train_sampler is not None:
        loaders.train_sampler.set_position(state.epoch, skip)
        return iter(loaders.train)
    if hasattr(loaders.train_dataset, "set_epoch"):
        loaders.train_dataset.set_epoch(state.epoch)
    it = iter(loaders.train)
    for _ in range(skip):  # a tar stream has no random access: decode and drop what was already trained on
        next(it)
    return it


def _validate(ctx: Ctx, state: State) -> bool:
    """Evaluate the model (and its EMA), log, and say whether this is the best top-1 so far."""
    t = ctx.c.trainer
    limit = t.limit_val_batches
    extra, note = {}, ""
    if t.val_bn_diagnostics:  # before any recalibration: what the moving averages and batch statistics give
        b = evaluate(ctx.model, ctx.loaders.val, ctx.di.device, ctx.autocast, limit, batch_stats=True)
        extra.update(batch_stats_loss=b["loss"], batch_stats_top1=b["top1"])
        note = f" | batch statistics: loss {b['loss']:.4f} top-1 {b['top1']:.2f}%"
        if t.precise_bn_batches:
            r = evaluate(ctx.model, ctx.loaders.val, ctx.di.device, ctx.autocast, limit)
            extra.update(running_loss=r["loss"], running_top1=r["top1"])
            note = f" | moving averages: loss {r['loss']:.4f} top-1 {r['top1']:.2f}%" + note
    if t.precise_bn_batches:
        _recalibrate(ctx, state, ctx.model)
    metrics = evaluate(ctx.model, ctx.loaders.val, ctx.di.device, ctx.autocast, limit)
    ctx.log.log(dict(kind="val", epoch=state.epoch - 1, step=state.step, **metrics, **extra))
    ctx.log.info(f"epoch {state.epoch}/{t.epochs} val{' (precise BN)' if t.precise_bn_batches else ''}: loss "
                 f"{metrics['loss']:.4f} top-1 {metrics['top1']:.2f}% top-5 {metrics['top5']:.2f}% "
                 f"({metrics['images']} images){note}")
    if ctx.ema is not None:
        set_temperature(ctx.ema.module, ctx.temperature(max(state.step - 1, 0)))
        if t.precise_bn_batches:
            _recalibrate(ctx, state, ctx.ema.module)
        ema_metrics = evaluate(ctx.ema.module, ctx.loaders.val, ctx.di.device, ctx.autocast, limit)
        ctx.log.log(dict(kind="val", epoch=state.epoch - 1, step=state.step, ema=True, **ema_metrics))
        ctx.log.info(f"  EMA: top-1 {ema_metrics['top1']:.2f}% top-5 {ema_metrics['top5']:.2f}%")
    state.last_val = metrics
    if metrics["top1"] > state.best_top1:
        state.best_top1, state.best_top5 = metrics["top1"], metrics["top5"]
        return True
    return False


def _recalibrate(ctx: Ctx, state: State, model: nn.Module) -> None:
    """Precise BN on the first trainer.precise_bn_batches batches of the next epoch's order (augmented as in
    training). Drawing them changes no random stream, and training mode ignores running statistics, so the run
    trains exactly as without it; the recalibrated statistics are what the checkpoint saves."""
    batches = _epoch_batches(ctx, State(state.epoch))
    recalibrate_bn(model, batches, ctx.c.trainer.precise_bn_batches, ctx.di.device, ctx.autocast)


def _save(ctx: Ctx, state: State, *, epoch_end: bool, is_best: bool = False) -> None:
    rngs = distributed.all_gather_object(ckpt_lib.rng_state())  # each rank resumes its own dropout stream
    if not ctx.di.is_main:
        return
    obj = dict(
        model=ctx.model.state_dict(), optimizer=ctx.optimizer.state_dict(),
        scheduler=ctx.sched.state_dict() if ctx.sched is not None else {}, scaler=ctx.scaler.state_dict(),
        ema=ctx.ema.state_dict() if ctx.ema is not None else None, rng=rngs,
        epoch=state.epoch, batch=state.batch, step=state.step, best_top1=state.best_top1,
        best_top5=state.best_top5, last_val=state.last_val, wandb_id=state.wandb_id,
        temperature=ctx.temperature(max(state.step - 1, 0)),
        config=OmegaConf.to_container(OmegaConf.structured(ctx.c)),
    )
    ctx.ckpts.save(obj, epoch_end=epoch_end, is_best=is_best)


def _resume(ctx: Ctx) -> State:
    path = ctx.ckpts.last
    ck = ckpt_lib.load(path)
    saved_model = ck["config"]["model"]["name"]
    if saved_model != ctx.c.model.name:
        raise ConfigError(f"paths.run_dir holds a checkpoint of {saved_model}, not model.name={ctx.c.model.name}; "
                          "choose another paths.run_dir")
    ctx.model.load_state_dict(ck["model"])
    ctx.optimizer.load_state_dict(ck["optimizer"])
    if ctx.sched is not None:
        ctx.sched.load_state_dict(ck["scheduler"])
    ctx.scaler.load_state_dict(ck["scaler"])
    if ctx.ema is not None and ck["ema"] is not None:
        ctx.ema.load_state_dict(ck["ema"])
    rngs = ck["rng"]
    ckpt_lib.set_rng_state(rngs[ctx.di.rank] if len(rngs) == ctx.di.world_size else rngs[0])
    state = State(ck["epoch"], ck["batch"], ck["step"], ck["best_top1"], ck["best_top5"], ck["last_val"],
                  ck["wandb_id"])
    ctx.log.truncate_metrics(state.step)
    ctx.log.info(f"resuming from {path}: epoch {state.epoch + 1}, step {state.step}")
    return state


def _summary(c: TrainConfig, state: State, params: int, status: str, skipped_images: int) -> dict:
    return dict(model=c.model.name, kernel_num=c.model.kernel_num, params=params, best_top1=state.best_top1,
                best_top5=state.best_top5, final_top1=state.last_val.get("top1", math.nan),
                final_top5=state.last_val.get("top5", math.nan), epochs=state.epoch,
                global_batch_size=c.data.global_batch_size, status=status, step=state.step,
                skipped_images=skipped_images)
