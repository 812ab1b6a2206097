"""Model, data loaders and run directory from the validated config: the set-up half of a run."""
from __future__ import annotations

import datetime
import math
import os
from dataclasses import dataclass
from pathlib import Path

import timm
import torch
from torch import nn
from torch.utils.data import DataLoader, IterableDataset

from . import distributed
from .config import MODEL_KWARGS, ConfigError, ModelConfig, TrainConfig, model_family
from .datasets import DatasetRootError, build_datasets, collate_skip_none
from .distributed import DistInfo, EvalShardSampler, ResumableSampler, SeededDataset
from .signals import ignore_stop_signals
from .transforms import build_transforms


def model_kwargs(m: ModelConfig, num_classes: int) -> dict:
    """The keyword arguments of `timm.create_model`: only the keys the config sets, so the builder's own defaults
    (dropout, reduction, ...) hold for the rest; `validate` has checked that the model's family takes them."""
    kwargs = dict(num_classes=num_classes)
    for key in MODEL_KWARGS.get(model_family(m.name), ()):
        value = getattr(m, key)
        if value is not None:
            kwargs[key] = tuple(value) if isinstance(value, list) else value
    if m.dropout is not None:
        kwargs["drop_rate"] = m.dropout
    if m.drop_path_rate is not None:
        kwargs["drop_path_rate"] = m.drop_path_rate
    return kwargs


def build_model(c: TrainConfig, num_classes: int) -> nn.Module:
    import models

    m = c.model
    try:
        model = timm.create_model(m.name, **model_kwargs(m, num_classes))
    except (TypeError, ValueError) as e:  # a combination of keys the builder refuses; validate checks one key at a time
        raise ConfigError(f"model: {m.name} cannot be built from this config: {e}") from None
    if m.init_checkpoint:
        try:
            models.load_checkpoint(model, m.init_checkpoint)
        except (FileNotFoundError, ValueError) as e:
            raise ConfigError(f"model.init_checkpoint: {e}") from None
    return model


def to_channels_last(model: nn.Module) -> nn.Module:
    """`model` with its 4-D parameters and buffers (conv kernels) in channels_last, in place. `Module.to(memory_format=
    channels_last)` also converts 5-D tensors and raises for them: ODConv's, CondConv's and DyConv's stacked kernels
    (K, O, I, kh, kw) and KernelWarehouse's warehouses (n, c_out, c_in, 1, 1) are 5-D and keep their layout."""
    with torch.no_grad():
        for t in (*model.parameters(), *model.buffers()):
            if t.dim() == 4:
                t.data = t.data.contiguous(memory_format=torch.channels_last)
    return model


def data_defaults(c: TrainConfig) -> dict:
    """mean, std and crop_pct of the run: the data config's where it sets them, else the model's pretrained_cfg
    (timm's data-config resolution, ImageNet's values for a model without one)."""
    from timm.data import resolve_data_config
    from timm.models import get_pretrained_cfg

    import models  # noqa: F401  registers the zoo's pretrained_cfgs

    pretrained = get_pretrained_cfg(c.model.name)
    model_cfg = resolve_data_config(pretrained_cfg=pretrained.to_dict() if pretrained else {}, use_test_size=True)
    d = c.data
    return dict(mean=tuple(d.mean if d.mean is not None else model_cfg["mean"]),
                std=tuple(d.std if d.std is not None else model_cfg["std"]),
                crop_pct=d.crop_pct if d.crop_pct is not None else model_cfg["crop_pct"])


@dataclass
class Loaders:
    train: DataLoader
    val: DataLoader
    train_sampler: ResumableSampler | None  # None for streamed (wds) data
    steps_per_epoch: int  # optimizer steps
    num_classes: int
    train_dataset: object


def build_loaders(c: TrainConfig, di: DistInfo) -> Loaders:
    d = c.data
    tf_train, tf_eval = build_transforms(
        d.img_size, **data_defaults(c), interpolation=d.interpolation, scale=tuple(d.scale), hflip=d.hflip,
        auto_augment=d.auto_augment, re_prob=d.reprob)
    if d.format == "demo":
        root = d.root or (str(Path(c.paths.cache_dir).expanduser() / "digits") if c.paths.cache_dir else None)
    else:
        root = d.root or os.environ.get(d.root_env) or None
    rank0_first = d.format == "demo" and di.world_size > 1  # rank 0 writes the digits once, the others read them
    if rank0_first and not di.is_main:
        distributed.barrier()
    try:
        ds = build_datasets(
            root, d.format, train_split=d.train_split, val_split=d.val_split, train_transform=tf_train,
            eval_transform=tf_eval, strict=d.strict, num_classes=d.num_classes, seed=c.trainer.seed,
            shuffle_buffer=d.shuffle_buffer)
    except DatasetRootError as e:
        raise ConfigError(str(e)) from None
    finally:
        if rank0_first and di.is_main:
            distributed.barrier()

    local_batch = d.global_batch_size // (di.world_size * c.trainer.accum_steps)
    micro_global = d.global_batch_size // c.trainer.accum_steps  # images per micro-step over all ranks
    common = dict(num_workers=d.workers, pin_memory=di.device.type == "cuda", persistent_workers=False,
                  worker_init_fn=ignore_stop_signals,  # the main process alone saves and requeues on a signal
                  # A private generator: creating a loader iterator must not draw from the global RNG, whose
                  # state (dropout) is saved in checkpoints; with it, a resumed run draws what a straight one does.
                  generator=torch.Generator().manual_seed(c.trainer.seed))
    if isinstance(ds.train, IterableDataset):
        train_sampler = None
        train = DataLoader(ds.train, batch_size=local_batch, drop_last=True, **common)
        workers = max(1, d.workers)
        micro_steps = workers * (math.ceil(len(ds.train) / workers) // local_batch)
    else:
        try:
            train_sampler = ResumableSampler(len(ds.train), micro_global, di.rank, di.world_size, c.trainer.seed)
        except ValueError as e:
            raise ConfigError(f"data.global_batch_size: {e}") from None
        train = DataLoader(SeededDataset(ds.train), batch_size=local_batch, sampler=train_sampler, drop_last=True,
                           **common)
        micro_steps = train_sampler.batches_per_epoch()
    steps = micro_steps // c.trainer.accum_steps
    if c.trainer.limit_train_batches:
        steps = min(steps, c.trainer.limit_train_batches)
    if steps == 0:
        raise ConfigError(f"data.global_batch_size={d.global_batch_size} is larger than the training set")
    val_sampler = None if isinstance(ds.val, IterableDataset) else EvalShardSampler(len(ds.val), di.rank,
                                                                                    di.world_size)
    val = DataLoader(ds.val, batch_size=d.eval_batch_size, sampler=val_sampler,
                     collate_fn=collate_skip_none, **common)
    return Loaders(train, val, train_sampler, steps, ds.num_classes, ds.train)


def resolve_run_dir(c: TrainConfig, di: DistInfo) -> Path:
    """One directory for all ranks: paths.run_dir when given (resume), the job directory of a Hydra multirun
    (submitit: the same on every task and after a requeue), otherwise a new timestamped one chosen on rank 0."""
    if c.paths.run_dir:
        return Path(c.paths.run_dir).expanduser()
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
        return Path(HydraConfig.get().runtime.output_dir)
    name = None
    if di.is_main:
        stamp = datetime.datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
        base = Path(c.paths.runs_root).expanduser() / c.run_name / stamp
        name, k = base, 1
        while name.exists():  # two runs started in the same second
            name, k = base.with_name(f"{stamp}_{k}"), k + 1
        name = str(name)
    return Path(distributed.broadcast_object(name))
