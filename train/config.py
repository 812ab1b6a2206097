"""Typed schema of the training config: Hydra checks keys and types, `validate` checks values.

The schema is registered in Hydra's ConfigStore as `train_schema`; `configs/train.yaml` lists it first in its
defaults, so every YAML option and every command-line override is merged into these dataclasses. A key that is
not declared here (a typo) or a value of the wrong type stops Hydra before any work; `validate` then checks the
values that a type cannot express (positive lr, known model name, batch divisible by the number of processes).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from odconv.formulations import FORMULATIONS
from odconv.temperature import TEMPERATURE_SHAPES


class ConfigError(ValueError):
    """A mistake in the user's config; the entry point prints its message as one line, without a traceback."""


@dataclass
class ModelConfig:
    """What `timm.create_model` receives. Every key but `name` and the temperature schedule is an argument of the zoo's
    builders; unset (None) keys are not passed, so the builder's default holds (one source for each default)."""
    # timm name of a zoo model: od_, condconv_, dyconv_, static_ or dcd_ + resnet18 ... mobilenetv2_100; kw_ +
    # resnet18, resnet50, mobilenetv2_050, mobilenetv2_100 or convnext_tiny (and static_convnext_tiny)
    name: str = MISSING
    kernel_num: Optional[int] = None  # od_ / dyconv_: kernels per layer; 0 marks a static model (not passed)
    reduction: Optional[float] = None  # od_ / dyconv_: attention hidden width = in_channels * reduction
    min_channel: Optional[int] = None  # od_: lower bound of that hidden width (released: 16)
    attentions: Optional[List[str]] = None  # od_: any subset of spatial, channel, filter, kernel (released: all four)
    spatial_act: Optional[str] = None  # od_: sigmoid (released) | softmax over the kernel taps
    attention_norm: Optional[str] = None  # od_: batch (released) | layer (batch-independent) | none
    dynamic_stages: Optional[List[int]] = None  # 1-based stages (strides 4, 8, 16, 32) with dynamic convs; None = all
    num_experts: Optional[int] = None  # condconv_: experts per layer
    kw_ratio: Optional[float] = None  # kw_: KernelWarehouse's parameter budget, 0.25 | 0.5 | 1 | 2 | 4 (released "b x")
    dropout: Optional[float] = None  # before the classifier
    # ResNet: stochastic depth on every residual branch; ConvNeXt: rising linearly to this rate (KernelWarehouse recipes)
    drop_path_rate: Optional[float] = None
    temperature_init: float = 30.0  # attention temperature annealed linearly to temperature_end ...
    temperature_epochs: float = 10.0  # ... over this many epochs, per iteration (released recipe; 0 = no annealing)
    # ODConv/DyConv: 1 (no temperature). kw_: the temperature is tau, the weight of the initial cell assignment,
    # annealed 1 -> 0 (temperature_init 1, temperature_end 0, temperature_epochs 20; 15 for MobileNetV2).
    temperature_end: float = 1.0
    # linear (released: linear in T) | reciprocal (linear in 1/T, the logits' scale: sharpens at an even rate; for
    # short runs, docs/training.md). ODConv/DyConv only: tau's 1 -> 0 is linear.
    temperature_shape: str = "linear"
    init_checkpoint: Optional[str] = None  # weights to start from (released or ours), classifier included


@dataclass
class DataConfig:
    name: str = MISSING  # label written to config.yaml: demo, imagenet, ...
    format: str = "folder"  # folder (ImageNet layout) | wds (tar shards) | demo (sklearn digits written to disk)
    root: Optional[str] = None  # dataset root; when unset, read from the environment variable `root_env`
    root_env: str = "IMAGENET_ROOT"
    num_classes: Optional[int] = None  # None: the number of class folders (or the shards' _info.json)
    train_split: str = "train"
    val_split: str = "val"
    img_size: int = 224  # RandomResizedCrop size for training, center-crop size for evaluation
    # None: the model's pretrained_cfg decides (train/builders.py, data_defaults); set them only where they are a
    # property of the data (the demo digits are 32x32 already: crop_pct 1).
    crop_pct: Optional[float] = None  # eval: resize to img_size / crop_pct, then center crop (256 -> 224)
    interpolation: str = "bilinear"
    mean: Optional[List[float]] = None
    std: Optional[List[float]] = None
    scale: List[float] = field(default_factory=lambda: [0.08, 1.0])  # RandomResizedCrop area range
    hflip: float = 0.5
    # Optional timm augmentations, all off: the paper's recipe is crop + flip only.
    auto_augment: Optional[str] = None  # e.g. rand-m9-mstd0.5-inc1 (RandAugment)
    reprob: float = 0.0  # random erasing probability
    mixup: float = 0.0  # mixup alpha
    mixup_ramp_epochs: float = 0.0  # alpha grows linearly from 0 over this many epochs (released DCD: 100); 0 = none
    cutmix: float = 0.0  # cutmix alpha
    label_smoothing: float = 0.0
    global_batch_size: int = 256  # images per optimizer step over all processes (accumulation included)
    eval_batch_size: int = 256  # per process
    workers: int = 8  # loader processes per training process
    strict: bool = False  # False: unreadable images are skipped and counted; True: the first one stops the run
    shuffle_buffer: int = 2000  # wds only: samples in the shuffle buffer of each loader worker


@dataclass
class OptimConfig:
    name: str = "sgd"  # sgd | adamw
    lr: float = 0.1  # at `lr_reference_batch`; scaled linearly to data.global_batch_size
    lr_reference_batch: int = 256
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 1e-4
    wd_exclude_norm_bias: bool = False  # released recipe decays every parameter
    clip_grad_norm: Optional[float] = None  # max global L2 norm; None = no clipping


@dataclass
class SchedConfig:
    name: str = "multistep"  # multistep | cosine | constant
    milestones: List[int] = field(default_factory=lambda: [30, 60, 90])  # epochs where lr *= decay_rate
    decay_rate: float = 0.1
    per_iteration: bool = False  # update the lr every optimizer step instead of every epoch
    min_lr: float = 0.0
    warmup_epochs: int = 0
    warmup_lr: float = 0.0


@dataclass
class TrainerConfig:
    epochs: int = 100
    accum_steps: int = 1  # micro-batches per optimizer step
    device: str = "auto"  # auto | cpu | cuda
    amp: str = "none"  # none | bf16 | fp16 (fp16 uses a GradScaler and skips non-finite steps)
    channels_last: bool = False
    compile: bool = False
    sync_bn: bool = False  # CUDA only (torch's SyncBatchNorm has no CPU kernel)
    freeze_bn: bool = False  # BatchNorm layers normalise with, and keep, their running statistics (fine-tuning)
    ema: bool = False
    ema_decay: float = 0.9998
    seed: int = 0
    deterministic: bool = False  # torch.use_deterministic_algorithms; needed for bit-exact resume on GPU
    eval_every: int = 1  # epochs
    # Before each evaluation, recompute every BatchNorm's running statistics as the average over this many training
    # batches of the current network (precise BN; train/precise_bn.py). 0 = off: the moving averages of training.
    precise_bn_batches: int = 0
    # Also log, per evaluation, top-1/loss with batch statistics (train-mode BatchNorm) and, under precise BN, with
    # the moving averages before recalibration: which of the network or its statistics is off (costs 1-2 passes).
    val_bn_diagnostics: bool = False
    log_every: int = 50  # optimizer steps
    keep_last: int = 3  # epoch checkpoints kept besides last.pt and best.pt
    save_every_steps: int = 0  # also write last.pt every N steps inside an epoch (0 = only at epoch end)
    limit_train_batches: Optional[int] = None  # optimizer steps per epoch, for smoke tests
    limit_val_batches: Optional[int] = None
    stop_after_steps: Optional[int] = None  # debug: behave as if preempted after this many steps (save, exit)
    progress: bool = True  # rank-0 progress line
    threads: Optional[int] = None  # torch intra-op threads per process; None = torch's default (all cores)
    odconv_dispatch: str = "auto"  # rules | measured | auto (measured on CUDA): odconv.set_dispatch
    # Force one formulation (odconv.FORMULATIONS, e.g. "grouped") for every dynamic conv instead of the dispatch:
    # formulations round differently, so this pins a run's arithmetic for a comparison across machines and loads.
    odconv_formulation: Optional[str] = None


@dataclass
class WandbConfig:
    mode: str = "disabled"  # online | offline | disabled
    project: str = "odconv"
    entity: Optional[str] = None
    name: Optional[str] = None
    tags: List[str] = field(default_factory=list)


@dataclass
class LoggerConfig:
    wandb: WandbConfig = field(default_factory=WandbConfig)
    tensorboard: bool = False  # event files in <run_dir>/tensorboard: scalars, the config as hparams, final metrics


@dataclass
class PathsConfig:
    runs_root: str = "runs"  # new runs go to runs_root/<run_name>/<timestamp>
    run_dir: Optional[str] = None  # set it to resume a run (auto-resume from its checkpoints/last.pt)
    cache_dir: Optional[str] = None  # demo dataset cache; default $ODCONV_CACHE or ~/.cache/odconv


@dataclass
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    sched: SchedConfig = field(default_factory=SchedConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)
    run_name: str = "run"
    mode: str = "train"  # train | eval
    checkpoint: Optional[str] = None  # eval mode: the checkpoint to evaluate


def register() -> None:
    ConfigStore.instance().store(name="train_schema", node=TrainConfig)


def _choice(key: str, value, allowed) -> None:
    if value not in allowed:
        raise ConfigError(f"{key} must be one of {sorted(allowed)}, got {value!r}")


def _positive(key: str, value, allow_zero: bool = False) -> None:
    if value < 0 or (value == 0 and not allow_zero):
        raise ConfigError(f"{key} must be {'>= 0' if allow_zero else '> 0'}, got {value}")


def validate(cfg: DictConfig | TrainConfig, world_size: int = 1) -> TrainConfig:
    """Check the values a type cannot express and return the plain dataclass the rest of the code uses."""
    c: TrainConfig = OmegaConf.to_object(cfg) if isinstance(cfg, DictConfig) else cfg
    _choice("mode", c.mode, {"train", "eval"})
    if c.mode == "eval" and not c.checkpoint:
        raise ConfigError("mode=eval needs checkpoint=PATH")
    m, d, o, s, t = c.model, c.data, c.optim, c.sched, c.trainer
    validate_model(m)

    _choice("data.format", d.format, {"folder", "wds", "demo"})
    if d.num_classes is not None:
        _positive("data.num_classes", d.num_classes)
    _choice("data.interpolation", d.interpolation, {"bilinear", "bicubic", "nearest", "lanczos", "random"})
    _positive("data.img_size", d.img_size)
    if d.crop_pct is not None and not 0.0 < d.crop_pct <= 1.0:
        raise ConfigError(f"data.crop_pct must be in (0, 1], got {d.crop_pct}")
    for key in ("mean", "std"):
        values = getattr(d, key)
        if values is not None and (len(values) != 3 or (key == "std" and min(values) <= 0)):
            raise ConfigError(f"data.{key} must be 3 numbers{' > 0' if key == 'std' else ''} (or null: the model's), "
                              f"got {values}")
    for key in ("hflip", "reprob"):
        if not 0.0 <= getattr(d, key) <= 1.0:
            raise ConfigError(f"data.{key} must be in [0, 1], got {getattr(d, key)}")
    for key in ("mixup", "mixup_ramp_epochs", "cutmix", "label_smoothing"):
        _positive(f"data.{key}", getattr(d, key), allow_zero=True)
    _positive("data.global_batch_size", d.global_batch_size)
    _positive("data.eval_batch_size", d.eval_batch_size)
    _positive("data.workers", d.workers, allow_zero=True)
    per_step = world_size * t.accum_steps
    if d.global_batch_size % per_step:
        raise ConfigError(
            f"data.global_batch_size={d.global_batch_size} must be divisible by processes x trainer.accum_steps "
            f"= {world_size} x {t.accum_steps}"
        )

    _choice("optim.name", o.name, {"sgd", "adamw"})
    _positive("optim.lr", o.lr)
    _positive("optim.lr_reference_batch", o.lr_reference_batch)
    _positive("optim.momentum", o.momentum, allow_zero=True)
    _positive("optim.weight_decay", o.weight_decay, allow_zero=True)
    if o.clip_grad_norm is not None:
        _positive("optim.clip_grad_norm", o.clip_grad_norm)

    _choice("sched.name", s.name, {"multistep", "cosine", "constant"})
    if any(b <= a for a, b in zip(s.milestones, s.milestones[1:])) or any(e <= 0 for e in s.milestones):
        raise ConfigError(f"sched.milestones must be positive and increasing, got {s.milestones}")
    _positive("sched.decay_rate", s.decay_rate)
    _positive("sched.min_lr", s.min_lr, allow_zero=True)
    _positive("sched.warmup_epochs", s.warmup_epochs, allow_zero=True)

    _positive("trainer.epochs", t.epochs)
    _positive("trainer.accum_steps", t.accum_steps)
    _choice("trainer.device", t.device, {"auto", "cpu", "cuda"})
    _choice("trainer.amp", t.amp, {"none", "bf16", "fp16"})
    _choice("trainer.odconv_dispatch", t.odconv_dispatch, {"rules", "measured", "auto"})
    if t.odconv_formulation is not None:
        _choice("trainer.odconv_formulation", t.odconv_formulation, set(FORMULATIONS))
    if t.sync_bn and world_size > 1 and t.device == "cpu":
        raise ConfigError("trainer.sync_bn needs CUDA: torch's SyncBatchNorm has no CPU implementation")
    if not 0.0 < t.ema_decay < 1.0:
        raise ConfigError(f"trainer.ema_decay must be in (0, 1), got {t.ema_decay}")
    for key in ("eval_every", "log_every"):
        _positive(f"trainer.{key}", getattr(t, key))
    for key in ("keep_last", "save_every_steps", "precise_bn_batches"):
        _positive(f"trainer.{key}", getattr(t, key), allow_zero=True)
    for key in ("limit_train_batches", "limit_val_batches", "stop_after_steps", "threads"):
        if getattr(t, key) is not None:
            _positive(f"trainer.{key}", getattr(t, key))
    _choice("logger.wandb.mode", c.logger.wandb.mode, {"online", "offline", "disabled"})
    return c


# The model keys each family of the zoo takes (the builders' keyword arguments, models/registry.py); a key set for a
# family that does not take it is a mistake, not something to drop silently.
MODEL_KWARGS = {
    "od_": ("kernel_num", "reduction", "min_channel", "attentions", "spatial_act", "attention_norm", "dynamic_stages"),
    "condconv_": ("num_experts", "dynamic_stages"),
    "dyconv_": ("kernel_num", "reduction", "dynamic_stages"),
    "kw_": ("kw_ratio",),
    "static_": (),
    "dcd_": (),  # the released DCD networks: their layer sizes are the released ones
    "fd_": ("kernel_num",),  # FDConv: the static network converted; kernel_num = frequency groups per layer
}
# Families whose layers have no attention temperature: a temperature_* key set for them is a mistake (the static and
# CondConv networks, older, still accept the keys and ignore them; the proxy study passes them the demo's).
NO_TEMPERATURE = ("dcd_", "fd_")
ZOO_KWARGS = sorted({k for keys in MODEL_KWARGS.values() for k in keys})
ATTENTIONS = ("spatial", "channel", "filter", "kernel")


def model_family(name: str) -> str | None:
    """The zoo prefix of a model name (od_, condconv_, dyconv_, static_, kw_, dcd_, fd_), None for timm's own models."""
    return next((prefix for prefix in MODEL_KWARGS if name.startswith(prefix)), None)


def validate_model(m: ModelConfig) -> None:
    _known_model(m.name)
    family = model_family(m.name)
    takes = MODEL_KWARGS.get(family, ())
    for key in ZOO_KWARGS:
        value = getattr(m, key)
        if value is None or key in takes or (key == "kernel_num" and value == 0 and family in ("static_", None)):
            continue
        hint = f"it takes {', '.join(takes)}" if takes else "it takes none of the dynamic-convolution keys"
        raise ConfigError(f"model.{key} does not apply to {m.name} ({hint}); remove it or pick another model.name")
    if m.kernel_num is not None and family in ("od_", "dyconv_", "fd_") and m.kernel_num < 1:
        raise ConfigError(f"model.kernel_num must be >= 1 for the dynamic model {m.name}, got {m.kernel_num}")
    if m.reduction is not None:
        _positive("model.reduction", m.reduction)
    for key in ("min_channel", "num_experts"):
        if getattr(m, key) is not None:
            _positive(f"model.{key}", getattr(m, key))
    if m.attentions is not None:
        unknown = [a for a in m.attentions if a not in ATTENTIONS]
        if unknown or len(set(m.attentions)) != len(m.attentions):
            raise ConfigError(f"model.attentions must be distinct names among {list(ATTENTIONS)}, got {m.attentions}")
        if "kernel" not in m.attentions and (m.kernel_num or 1) > 1:
            raise ConfigError(f"model.attentions without 'kernel' needs kernel_num 1 (nothing would mix the "
                              f"{m.kernel_num} kernels), got kernel_num={m.kernel_num}")
    if m.spatial_act is not None:
        _choice("model.spatial_act", m.spatial_act, {"sigmoid", "softmax"})
    if m.attention_norm is not None:
        _choice("model.attention_norm", m.attention_norm, {"batch", "layer", "none"})
    if m.dynamic_stages is not None:
        stages = list(m.dynamic_stages)
        if not stages or len(set(stages)) != len(stages) or not set(stages) <= {1, 2, 3, 4}:
            raise ConfigError(f"model.dynamic_stages must be distinct stage numbers among [1, 2, 3, 4], got {stages}")
    if m.dropout is not None and not 0.0 <= m.dropout < 1.0:
        raise ConfigError(f"model.dropout must be in [0, 1), got {m.dropout}")
    if m.drop_path_rate is not None and not 0.0 <= m.drop_path_rate < 1.0:
        raise ConfigError(f"model.drop_path_rate must be in [0, 1), got {m.drop_path_rate}")
    if family == "kw_":
        if m.kw_ratio is not None:
            _choice("model.kw_ratio", m.kw_ratio, {0.25, 0.5, 1, 2, 4})
        if not 0.0 <= m.temperature_end <= m.temperature_init <= 1.0:
            raise ConfigError(f"model.temperature_init and temperature_end are KernelWarehouse's tau for {m.name}: "
                              f"need 0 <= end <= init <= 1, got init {m.temperature_init}, end {m.temperature_end}")
        if m.temperature_shape != "linear":
            raise ConfigError(f"model.temperature_shape must be linear for {m.name}: its temperature is tau, a mixing "
                              f"weight annealed 1 -> 0, not a softmax temperature; got {m.temperature_shape}")
    elif family in NO_TEMPERATURE:
        defaults = ModelConfig(name=m.name)
        changed = [k for k in ("temperature_init", "temperature_epochs", "temperature_end", "temperature_shape")
                   if getattr(m, k) != getattr(defaults, k)]
        if changed:
            raise ConfigError(f"model.{changed[0]} does not apply to {m.name}: it has no attention temperature; "
                              f"remove the temperature_* overrides")
    else:
        if m.temperature_init < 1.0:
            raise ConfigError(f"model.temperature_init must be >= 1 (1 = no temperature), got {m.temperature_init}")
        if not 1.0 <= m.temperature_end <= m.temperature_init:
            raise ConfigError(f"model.temperature_end must be in [1, temperature_init] (1 = no temperature), got "
                              f"{m.temperature_end}")
    _positive("model.temperature_epochs", m.temperature_epochs, allow_zero=True)
    _choice("model.temperature_shape", m.temperature_shape, set(TEMPERATURE_SHAPES))


def _known_model(name: str) -> None:
    import timm

    import models  # noqa: F401  registers the zoo with timm

    zoo = [n for n in timm.list_models() if model_family(n)]
    if name not in zoo and name not in timm.list_models():
        raise ConfigError(f"model.name {name!r} is not a registered model; the zoo has: {', '.join(sorted(zoo))}")


def lr_for(c: TrainConfig) -> float:
    """The released lr is given at batch 256; scale it linearly to the global batch (Goyal et al., 2017)."""
    return c.optim.lr * c.data.global_batch_size / c.optim.lr_reference_batch
