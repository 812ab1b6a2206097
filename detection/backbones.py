"""The zoo's ResNet and MobileNetV2 (ODConv, KernelWarehouse, FDConv and static) as mmdet backbones, registered in
mmdet's `MODELS`.

The networks are the `models/` modules built through timm with the classifier removed; this file only adds what
an mmdet backbone needs: `out_indices`, `frozen_stages`, `norm_eval` and `init_cfg=dict(type='Pretrained', ...)`.

`norm_eval` puts every BatchNorm in eval mode, *including the BN inside each ODConv attention branch*
(`*.attention.bn`). Decided on purpose: that BN normalises one pooled vector per image, so with the 1-2 images per
GPU of detection training its batch statistics are nearly degenerate (with one image per GPU the forward fails),
and the ImageNet running statistics are the ones the attention heads were trained with. The released detectors do
the same. Its affine weights still train, as for every other BN under `norm_eval`. The same holds for the
KernelWarehouse attention's BatchNorm1d (`*.attention.norm1`), as the released KW detectors do.

`attention_norm_eval` decides the attention-branch BN alone (default: as `norm_eval`). Trained from scratch with
4 images per batch at temperature 1 from the first step, that BN's running statistics drift away from what single
images give (on the demo set after 200 iterations: mean |z| 5, up to 276 standard deviations at test time), so
test-time attentions differ from every training-time one. Annealing the temperature (`ODConvTemperatureHook`, as
the classification recipe) cured it in our measurement; `attention_norm_eval=True` (statistics frozen at their
initial values: a trained affine map, the same in training and at test time) is the other way out, and
`attention_norm='layer'` (a per-sample norm, no batch statistics; a model argument passed through) is the one the
demo configs use: docs/detection.md has the box AP of each.
"""
from __future__ import annotations

from typing import Optional, Sequence

import timm
from mmdet.registry import MODELS
from mmengine.model import BaseModule
from torch import Tensor, nn

import models
from models.resnet import ARCH_SETTINGS
from odconv import (FDConv2d, KWAttention, ODAttention, convert_to_fdconv, final_temperature, set_temperature,
                    static_to_fdconv_state_dict)


class ZooBackbone(BaseModule):
    """A zoo network (`body`) returning the stage outputs picked by `out_indices` (0..3, strides 4, 8, 16, 32)."""

    def __init__(
        self,
        model_name: str,
        out_indices: Sequence[int] = (0, 1, 2, 3),
        frozen_stages: int = -1,
        norm_eval: bool = True,
        attention_norm_eval: Optional[bool] = None,
        init_cfg: Optional[dict] = None,
        **model_kwargs,
    ) -> None:
        out_indices = tuple(out_indices)
        if not out_indices or any(i not in (0, 1, 2, 3) for i in out_indices) or len(set(out_indices)) != len(out_indices):
            raise ValueError(f"out_indices must be distinct values among 0, 1, 2, 3, got {out_indices}")
        if frozen_stages not in (-1, 0, 1, 2, 3, 4):
            raise ValueError(f"frozen_stages must be -1 (none), 0 (stem) or 1..4, got {frozen_stages}")
        if init_cfg is not None and init_cfg.get("type") == "Pretrained" and not init_cfg.get("checkpoint"):
            raise ValueError("init_cfg=dict(type='Pretrained') needs checkpoint=<path to a classification checkpoint>")
        # mmengine would handle a Pretrained init_cfg with its own non-strict loader; we load it ourselves.
        super().__init__(init_cfg=init_cfg)
        self.body = timm.create_model(model_name, num_classes=0, **model_kwargs)
        # The pretrained backbone is fine-tuned where its ImageNet schedule ended: ODConv's temperature 1,
        # KernelWarehouse's tau 0 (attention only, no initial assignment blended in).
        set_temperature(self.body, final_temperature(self.body))
        self.model_name = model_name
        self.out_indices = tuple(sorted(out_indices))
        self.frozen_stages = frozen_stages
        self.norm_eval = norm_eval
        self.attention_norm_eval = norm_eval if attention_norm_eval is None else attention_norm_eval
        self.out_channels = [self.body.feature_info[i]["num_chs"] for i in self.out_indices]
        self._freeze_stages()
        self.register_load_state_dict_pre_hook(_accept_released_layout)

    def stage_modules(self, stage: int) -> list[nn.Module]:
        """The modules of stage 0 (stem) .. 4; defined per family."""
        raise NotImplementedError

    def _freeze_stages(self) -> None:
        for stage in range(self.frozen_stages + 1):
            for m in self.stage_modules(stage):
                m.eval()
                for p in m.parameters():
                    p.requires_grad = False

    def train(self, mode: bool = True) -> "ZooBackbone":
        super().train(mode)
        self._freeze_stages()
        if mode:
            attention = {id(getattr(m, "bn", None)) for m in self.modules() if isinstance(m, ODAttention)}
            attention |= {id(m.norm1) for m in self.modules() if isinstance(m, KWAttention)}
            for m in self.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm) and \
                        (self.attention_norm_eval if id(m) in attention else self.norm_eval):
                    m.eval()
        return self

    def init_weights(self) -> None:
        cfg = self.init_cfg
        if cfg is not None and cfg.get("type") == "Pretrained":
            self.load_classification_checkpoint(cfg["checkpoint"])
            self._is_init = True
        else:
            super().init_weights()
        set_temperature(self.body, final_temperature(self.body))

    def load_classification_checkpoint(self, path: str) -> None:
        """Load an ImageNet checkpoint of the same zoo model (ours or released), ignoring its classifier.

        Any other key that does not fit raises `models.CheckpointMismatchError` listing missing/unexpected keys.
        """
        state = models.read_state_dict(path)
        head = self.body.pretrained_cfg["classifier"] + "."
        state = {k: v for k, v in state.items() if not k.startswith(head)}
        models.load_state_dict_checked(self.body, state, strict=True, source=str(path))

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        outs = self.body.forward_stages(x)
        return tuple(outs[i] for i in self.out_indices)

    def adopt_layout(self, state: dict, prefix: str) -> dict:
        """`state` with this backbone's keys (under `prefix`) in our layout, `prefix + 'body.*'`.

        The released detectors keep the backbone's modules directly under `backbone.*`, with the ImageNet
        classifier they never use (`backbone.fc.*` / `backbone.classifier.*`); ours nest them under `body`.
        A state dict already in our layout is returned as it is.
        """
        body = prefix + "body."
        if any(k.startswith(body) for k in state):
            return state
        head = prefix + self.body.pretrained_cfg["classifier"] + "."
        return {(body + k[len(prefix):] if k.startswith(prefix) else k): v
                for k, v in state.items() if not k.startswith(head)}


def _accept_released_layout(module: ZooBackbone, state_dict: dict, prefix: str, *args) -> None:
    # Any loader (mmengine's load_from and resume included) gets both layouts; the hook must edit in place.
    adopted = module.adopt_layout(dict(state_dict), prefix)
    state_dict.clear()
    state_dict.update(adopted)


def _od_kwargs(kernel_num: int, reduction: float) -> dict:
    if kernel_num < 1:
        raise ValueError(f"kernel_num must be >= 1 for an ODConv backbone, got {kernel_num}; use the Static* backbone")
    if not 0.0 < reduction <= 1.0:
        raise ValueError(f"reduction must be in (0, 1], got {reduction}")
    return dict(kernel_num=kernel_num, reduction=reduction)


class _ResNetStages:
    def stage_modules(self, stage: int) -> list[nn.Module]:
        body = self.body
        return [body.conv1, body.bn1] if stage == 0 else [getattr(body, f"layer{stage}")]


class _MobileNetV2Stages:
    def stage_modules(self, stage: int) -> list[nn.Module]:
        # Stem = features 0-1 (the stride-2 part before the first fed stage), as the released detectors.
        ends = (1, *self.body.STAGE_ENDS)
        start = 0 if stage == 0 else ends[stage - 1] + 1
        return list(self.body.features[start : ends[stage] + 1])


def _resnet_name(prefix: str, depth: int) -> str:
    if depth not in ARCH_SETTINGS:
        raise ValueError(f"depth must be one of {tuple(sorted(ARCH_SETTINGS))}, got {depth}")
    return f"{prefix}resnet{depth}"


def _mobilenet_name(prefix: str, widen_factor: float) -> str:
    # The zoo's registry is the one list of widths: `static_mobilenetv2_050` is width 0.5.
    widths = {int(n.rsplit("_", 1)[1]) / 100: n for n in models.MODEL_NAMES if n.startswith(prefix + "mobilenetv2_")}
    if widen_factor not in widths:
        raise ValueError(f"widen_factor must be one of {tuple(sorted(widths))}, got {widen_factor}")
    return widths[widen_factor]


@MODELS.register_module(name="OD_ResNet")
class ODResNet(_ResNetStages, ZooBackbone):
    """ResNet with ODConv in every residual-block conv; `depth` in 18, 34, 50, 101."""

    def __init__(self, depth: int = 50, kernel_num: int = 4, reduction: float = 0.0625, **kwargs) -> None:
        super().__init__(_resnet_name("od_", depth), **_od_kwargs(kernel_num, reduction), **kwargs)


@MODELS.register_module(name="StaticResNet")
class StaticResNet(_ResNetStages, ZooBackbone):
    """The zoo's static ResNet (loads this project's static ImageNet checkpoints)."""

    def __init__(self, depth: int = 50, **kwargs) -> None:
        super().__init__(_resnet_name("static_", depth), **kwargs)


@MODELS.register_module(name="FD_ResNet")
class FDResNet(_ResNetStages, ZooBackbone):
    """The zoo's static ResNet with every block conv that passes FDConv's gate converted to `FDConv2d`, as the
    released `ResNet_FDConv` (stem and shortcuts static): FDConv starts from the static network's weights.

    `init_cfg=dict(type='Pretrained', checkpoint=...)` takes a static ImageNet checkpoint (converted to
    `dft_weight` on load) or an FDConv one (the released `resnet50_Convert2FDConv.pth` layout); the modulation
    parameters, which neither holds, keep their initialisation (`gate_init`, released by default). `fdconv_cfg`
    goes to every layer (the released configs' conv_cfg without `type`). In frozen stages the parameters whose
    names contain an entry of `need_grad_list` still train, as released (the modulation: 'KSM', 'FBM').
    """

    def __init__(self, depth: int = 50, kernel_num: int = 64, gate_init: str = "released",
                 fdconv_cfg: Optional[dict] = None, need_grad_list: Sequence[str] = ("KSM", "FBM"), **kwargs) -> None:
        self.need_grad_list = tuple(need_grad_list)
        super().__init__(_resnet_name("static_", depth), **kwargs)
        convert_to_fdconv(self.body, gate_init=gate_init, kernel_num=kernel_num, **(fdconv_cfg or {}))
        self._freeze_stages()

    def _freeze_stages(self) -> None:
        super()._freeze_stages()
        for stage in range(1, self.frozen_stages + 1):
            for m in self.stage_modules(stage):
                for name, p in m.named_parameters():
                    if any(key in name for key in self.need_grad_list):
                        p.requires_grad = True

    def load_classification_checkpoint(self, path: str) -> None:
        state = models.read_state_dict(path)
        head = self.body.pretrained_cfg["classifier"] + "."
        state = {k: v for k, v in state.items() if not k.startswith(head)}
        if not any(k.endswith(".dft_weight") for k in state):
            state = static_to_fdconv_state_dict(state, self.body)
        modulation = {f"{n}.{k}" for n, m in self.body.named_modules() if isinstance(m, FDConv2d)
                      for k in m.state_dict() if k not in ("dft_weight", "weight", "bias")}
        missing, unexpected = self.body.load_state_dict(state, strict=False)
        wrong = sorted(set(missing) - modulation)
        if wrong or unexpected:
            raise models.CheckpointMismatchError(
                f"{path}: does not fit {self.model_name} with FDConv: missing {wrong[:8]}, unexpected "
                f"{sorted(unexpected)[:8]}")


@MODELS.register_module(name="OD_MobileNetV2")
class ODMobileNetV2(_MobileNetV2Stages, ZooBackbone):
    """MobileNetV2 with ODConv in every conv but the stem; FPN gets the 24/32/96/1280-channel stages (width 1.0)."""

    def __init__(self, widen_factor: float = 1.0, kernel_num: int = 4, reduction: float = 0.0625, **kwargs) -> None:
        super().__init__(_mobilenet_name("od_", widen_factor), **_od_kwargs(kernel_num, reduction), **kwargs)


@MODELS.register_module(name="StaticMobileNetV2")
class StaticMobileNetV2(_MobileNetV2Stages, ZooBackbone):
    """The zoo's static MobileNetV2 (loads this project's static ImageNet checkpoints)."""

    def __init__(self, widen_factor: float = 1.0, **kwargs) -> None:
        super().__init__(_mobilenet_name("static_", widen_factor), **kwargs)


def _kw_kwargs(kw_ratio: float, allowed: Sequence[float], attention_norm: str) -> dict:
    if kw_ratio not in allowed:
        raise ValueError(f"kw_ratio must be one of {list(allowed)}, got {kw_ratio}")
    if attention_norm not in ("batch", "layer"):
        raise ValueError(f"attention_norm must be 'batch' (released) or 'layer', got {attention_norm!r}")
    return dict(kw_ratio=kw_ratio, attention_norm=attention_norm)


@MODELS.register_module(name="KW_ResNet")
class KWResNet(_ResNetStages, ZooBackbone):
    """ResNet with KernelWarehouse convs (`models.kw`); `depth` 18 or 50, `kw_ratio` the released "b x" setting.

    The network owns its warehouses (`body.warehouse_manager`, created and allocated when it is built), and runs
    at tau 0, as the released detector backbones. `frozen_stages` freezes the stages' modules (attentions, BNs,
    static convs) but not the warehouses, which stages share (a stage's first block draws on the previous
    stage's): as released, the cells keep training. The released backbone's `drop_path_rate` default is 0.1
    (the configs set it); `attention_norm='layer'` replaces the released BatchNorm1d of the attention by a
    per-sample LayerNorm (for batches too small for batch statistics, trained from scratch).
    """

    def __init__(self, depth: int = 50, kw_ratio: float = 1, attention_norm: str = "batch", **kwargs) -> None:
        if depth not in (18, 50):
            raise ValueError(f"depth must be 18 or 50 for a KernelWarehouse ResNet, got {depth}")
        super().__init__(f"kw_resnet{depth}", **_kw_kwargs(kw_ratio, (0.25, 0.5, 1, 2, 4), attention_norm),
                         **kwargs)


@MODELS.register_module(name="KW_MobileNetV2")
class KWMobileNetV2(_MobileNetV2Stages, ZooBackbone):
    """MobileNetV2 with KernelWarehouse convs in every conv, stem included (`models.kw`); `widen_factor` 0.5 or 1.0,
    `kw_ratio` 1, 2 or 4 (the released 1/2x network has a KW classifier, which a detector does not keep). FPN gets
    the 24/32/96/1280-channel stages (width 1.0), the released detectors' features 3, 6, 13 and 18. Warehouses and
    tau as `KW_ResNet`."""

    def __init__(self, widen_factor: float = 1.0, kw_ratio: float = 1, attention_norm: str = "batch",
                 **kwargs) -> None:
        widths = {0.5: "kw_mobilenetv2_050", 1.0: "kw_mobilenetv2_100"}
        if widen_factor not in widths:
            raise ValueError(f"widen_factor must be 0.5 or 1.0 for a KernelWarehouse MobileNetV2, got {widen_factor}")
        super().__init__(widths[widen_factor], **_kw_kwargs(kw_ratio, (1, 2, 4), attention_norm), **kwargs)


__all__ = ["FDResNet", "KWMobileNetV2", "KWResNet", "ODMobileNetV2", "ODResNet", "StaticMobileNetV2", "StaticResNet",
           "ZooBackbone"]
