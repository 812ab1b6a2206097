"""KernelWarehouse networks: the zoo's ResNet, MobileNetV2 and ConvNeXt-T with KW convs, their warehouses as released.

Li, Yao. "KernelWarehouse: Rethinking the Design of Dynamic Convolution." ICML 2024 (github.com/OSVAI/KernelWarehouse,
models/kw_resnet.py, kw_mobilenetv2.py, kw1d2x_mobilenetv2.py, kw_convnext.py, configs/*.json).

The architectures are models/resnet.py, models/mobilenetv2.py and models/convnext.py, built with a conv factory that gives KW convs
without cells. Then, as the released `Warehouse_Manager` protocol does after the network exists, each KW conv is
registered under the warehouse name the released code gives it (a re-statement of its naming rule from the module's
place in the network), the few convs the release leaves static are made static, and the warehouses are created and
allocated (odconv/warehouse.py). `kw_ratio` is the released "b x" setting (the parameter budget of the warehouses
relative to the static convs they replace):

- ResNet: b < 1: cells of half the gcd of the stage's channels (cell_inplane/outplane_ratio 0.5), cell_num_ratio b;
  b >= 1: cells of the full gcd, cell_num_ratio b; ResNet50 1/2x adds the non-local basis (ratio 0.0625).
  Warehouses: one per stage; in a stage's first block conv1 and the strided 1x1 shortcut use the previous stage's
  (ResNet50's layer1.0.conv1, with no previous stage, stays static; ResNet18's uses stage 0). Stem, stride-1
  shortcut and classifier are static.
- MobileNetV2: every conv is KW, stem and final 1x1 included; 6 KW stages over the 7 inverted-residual groups, and
  the whole first block of a KW stage uses the previous stage's warehouses. 1x: one pw and one dw warehouse per
  stage; 2x, 4x: pw-expand, dw and pw-linear warehouses per stage. 1/2x is its own released network: the pw convs
  of KW stages 1-5 static, the classifier a KWLinear, per-warehouse settings, attention reduction 1/32.
- ConvNeXt-T (released: 1x): every conv is KW (stem, the three downsampling convs, each block's 7x7 depthwise and
  both pointwise convs), with bias; the attention's norm is LayerNorm (fc1 with bias). Warehouses: the stem's, one
  per downsampling conv, and per stage one dw and one pw warehouse (12). cell_num_ratio b, cells of the full gcd;
  2x and 4x follow that rule but were not released.

The released training script passes `--dropout` (default 0) to every model, so the KW builders' dropout default is
0. State-dict names are the released ones (`warehouse_manager.weights.{k}`; MobileNetV2 1x/2x/4x name their
classifier `classifier.*`, not `classifier.1.*`, through state-dict hooks). `attention_norm` is the attention's
norm, by default the released one: 'batch' (BatchNorm1d; LayerNorm for ConvNeXt) or 'layer' (per-sample
LayerNorm; for batches too small for batch statistics, e.g. the detection demo trained from scratch).
"""
from __future__ import annotations

import re
from typing import Any, Callable, Optional

from timm.layers import register_notrace_module
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from torch import nn

from odconv import KWConvNd, KWLinear, WarehouseManager, build_warehouses, create_dynamic_conv

from .convnext import ConvNeXt, convnext_cfg
from .mobilenetv2 import INVERTED_RESIDUAL_SETTING, MobileNetV2
from .registry import _cfg
from .resnet import ResNet

for _cls in (KWConvNd, KWLinear):  # as the other dynamic convs: FX tracing keeps them whole
    register_notrace_module(_cls)

KW_RATIOS = (0.25, 0.5, 1, 2, 4)
KW_ARCHS = ("resnet18", "resnet50", "mobilenetv2_050", "mobilenetv2_100", "convnext_tiny")
# The released ImageNet rows (README): architecture -> kw_ratio values.
RELEASED = {"resnet18": (0.25, 0.5, 1, 2, 4), "resnet50": (0.5, 1, 4), "mobilenetv2_100": (0.5, 1, 4),
            "mobilenetv2_050": (0.5, 1, 4), "convnext_tiny": (1,)}
KW_STAGES = (1, 2, 3, 4, 5, 6, 6)  # released kw_stage_setting: the KW stage of each inverted-residual group
# kw1d2x_mobilenetv2.py: per warehouse, in registration order (stem, dw 1-5, stage-6 pw0, dw, pw1, classifier).
MOBILENETV2_HALF = dict(reduction=0.03125, cell_num_ratio=(1, 1, 1, 1, 1, 1, 0.5, 1, 0.5, 0.5),
                        cell_inplane_ratio=(1, 1, 1, 1, 1, 1, 0.5, 1, 0.5, 0.025),
                        cell_outplane_ratio=(1, 1, 1, 1, 1, 1, 0.5, 1, 0.5, 1), sharing_range=("layer",))


def manager_settings(arch: str, kw_ratio: float) -> dict[str, Any]:
    """The WarehouseManager arguments of a released setting (configs/*.json and the model constructors)."""
    if kw_ratio not in KW_RATIOS:
        raise ValueError(f"kw_ratio must be one of {list(KW_RATIOS)}, got {kw_ratio}")
    if arch.startswith("mobilenetv2"):
        if kw_ratio == 0.5:
            return dict(MOBILENETV2_HALF)
        if kw_ratio < 1:
            raise ValueError(f"kw_{arch} has no kw_ratio {kw_ratio} (released: {list(RELEASED[arch])}; 2 follows 4's "
                             "rule; below 1 only the hand-designed 1/2x exists)")
        return dict(reduction=0.0625, cell_num_ratio=kw_ratio,
                    sharing_range=("layer", "pwconv") if kw_ratio == 1 else ("layer",))
    if arch.startswith("convnext"):
        if kw_ratio < 1:
            raise ValueError(f"kw_{arch} has no kw_ratio {kw_ratio} (released: {list(RELEASED[arch])}; 2 and 4 follow "
                             "its rule, cell_num_ratio b; below 1 no rule was released)")
        # configs/convnext/kw1x_convnext_tiny.json; the LayerNorm trunk is the released model's norm_layer
        return dict(reduction=0.0625, cell_num_ratio=kw_ratio, sharing_range=("layer", "pwconv"), norm="layer")
    cell = 0.5 if kw_ratio < 1 else 1.0
    settings = dict(reduction=0.0625, cell_num_ratio=kw_ratio, cell_inplane_ratio=cell, cell_outplane_ratio=cell,
                    sharing_range=("layer", "conv"))
    if arch == "resnet50" and kw_ratio == 0.5:
        settings["nonlocal_basis_ratio"] = 0.0625
    return settings


def kw_conv(in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, groups: int = 1, *,
            device: Any = None, dtype: Any = None) -> nn.Module:
    """A ConvFactory giving a KW conv without cells (registered with its warehouse once the network exists)."""
    return create_dynamic_conv("kw", in_channels, out_channels, kernel_size, stride, (kernel_size - 1) // 2, groups,
                               device=device, dtype=dtype)


def kw_strided_shortcut(in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, groups: int = 1, *,
                        device: Any = None, dtype: Any = None) -> nn.Module:
    """ResNet's shortcut: KW where it is strided, static where it only widens (released)."""
    if stride == 1:
        return nn.Conv2d(in_channels, out_channels, kernel_size, bias=False, device=device, dtype=dtype)
    return kw_conv(in_channels, out_channels, kernel_size, stride, groups, device=device, dtype=dtype)


def kw_patch_conv(in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, groups: int = 1,
                  padding: int = 0, *, device: Any = None, dtype: Any = None) -> nn.Module:
    """ConvNeXt's factory (models.convnext.PatchConvFactory): a KW conv with bias, without cells."""
    return create_dynamic_conv("kw", in_channels, out_channels, kernel_size, stride, padding, groups, bias=True,
                               device=device, dtype=dtype)


def convnext_warehouse(name: str, module: nn.Module) -> str:
    """The released warehouse name of the KW conv `name` of a ConvNeXt (kw_convnext.py: the stem's
    `stagestem_conv0`, downsampling conv i's `stage{i-1}_layerds_conv0`, a block's `stage{i}_layer{j}_dwconv0`,
    `..._pwconv1`, `..._pwconv2`)."""
    if name == "downsample_layers.0.0":
        return "stagestem_conv0"
    m = re.fullmatch(r"downsample_layers\.(\d)\.1", name)
    if m:
        return f"stage{int(m.group(1)) - 1}_layerds_conv0"
    m = re.fullmatch(r"stages\.(\d)\.(\d+)\.(dwconv|pwconv1|pwconv2)", name)
    if m is None:
        raise ValueError(f"{name} is not a conv of a ConvNeXt")
    kind = m.group(3)
    return f"stage{m.group(1)}_layer{m.group(2)}_" + ("dwconv0" if kind == "dwconv" else kind)


def resnet_warehouse(name: str, bottleneck: bool) -> Optional[str]:
    """The released warehouse name of the KW conv `name` of a ResNet (None: the release keeps it static)."""
    m = re.fullmatch(r"layer(\d)\.(\d+)\.(conv(\d)|downsample\.0)", name)
    if m is None:
        raise ValueError(f"{name} is not a residual-block conv of a ResNet")
    stage, block = int(m.group(1)) - 1, int(m.group(2))
    if m.group(4) is None:  # the strided shortcut of a stage's first block: the previous stage's warehouse
        return f"stage{stage - 1}_layer{block + 1}_conv0"
    conv = int(m.group(4)) - 1
    if block == 0 and conv == 0:  # handover: the first block's conv1 uses the previous stage's warehouse
        if stage == 0 and bottleneck:
            return None  # Bottleneck: enabled only for a stage >= 0
        return f"stage{max(stage - 1, 0)}_layer{block}_conv{conv}"
    return f"stage{stage}_layer{block}_conv{conv}"


def mobilenetv2_warehouses(half: bool) -> Callable[[str, nn.Module], Optional[str]]:
    """The released warehouse names of a KW MobileNetV2, by module name (None: static in the 1/2x network)."""
    blocks = []  # (KW stage, layer index) of features[1..17], as the released constructor's loop counts them
    layer = 0
    for idx, (_, _, n, _) in enumerate(INVERTED_RESIDUAL_SETTING):
        for i in range(n):
            handover = i == 0 and idx > 0 and KW_STAGES[idx] != KW_STAGES[idx - 1]
            blocks.append((KW_STAGES[idx] - 1 if handover else KW_STAGES[idx], layer))
            layer = 0 if handover else layer + 1

    def name_of(name: str, module: nn.Module) -> Optional[str]:
        if name == "features.0.0":
            return "stage0_conv0"
        if name == "classifier.1":
            return "classifier"
        index = int(name.split(".")[1])
        if index == len(blocks) + 1:  # the final 1x1 conv
            return f"stage{KW_STAGES[-1]}_layer{layer}_pwconv1"
        stage, layer_idx = blocks[index - 1]
        if module.groups > 1:
            return f"stage{stage}_layer{layer_idx}_dwconv0"
        if half and stage < 6:  # kw1d2x: pw convs of KW stages 1-5 stay static
            return None
        pw = 1 if re.fullmatch(r"features\.\d+\.conv\.\d+", name) else 0  # the pw-linear conv is not in a ConvBNReLU
        return f"stage{stage}_layer{layer_idx}_pwconv{pw}"
    return name_of


def _static_twin(layer: KWConvNd) -> nn.Conv2d:
    conv = nn.Conv2d(layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride, layer.padding,
                     layer.dilation, layer.groups, bias=layer.bias is not None, **layer.factory_kwargs)
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)
    return conv


def attach_warehouses(model: nn.Module, manager: WarehouseManager,
                      warehouse_of: Callable[[str, nn.Module], Optional[str]]) -> nn.Module:
    """Register every KW layer of `model` under `warehouse_of(name, layer)` in module order (None: replace it by
    a static conv), then create and allocate the warehouses."""
    targets = [(n, m) for n, m in model.named_modules()
               if isinstance(m, KWLinear) or (isinstance(m, KWConvNd) and not n.endswith(".conv"))]
    for name, layer in targets:
        warehouse = warehouse_of(name, layer)
        if warehouse is not None:
            manager.add(layer, warehouse)
        else:
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent), child, _static_twin(layer))
    return build_warehouses(model, manager)


def _released_classifier_names(model: MobileNetV2) -> None:
    """State dicts name the classifier `classifier.*` as the released KW MobileNetV2 (a bare nn.Linear there)."""
    def save(module, state, prefix, local_metadata):
        for k in [k for k in state if k.startswith(prefix + "classifier.1.")]:
            state[prefix + "classifier." + k[len(prefix + "classifier.1."):]] = state.pop(k)

    def load(module, state, prefix, *args):
        for k in [k for k in state if re.fullmatch(re.escape(prefix) + r"classifier\.(weight|bias)", k)]:
            state[prefix + "classifier.1." + k[len(prefix + "classifier."):]] = state.pop(k)
    model.register_state_dict_post_hook(save)
    model.register_load_state_dict_pre_hook(load)


def _kw_cfg(arch: str) -> dict[str, Any]:
    if arch.startswith("resnet"):
        return _cfg("conv1", "fc")
    return convnext_cfg() if arch.startswith("convnext") else _cfg("features.0.0", "classifier")


default_cfgs = generate_default_cfgs({"kw_" + arch: _kw_cfg(arch) for arch in KW_ARCHS})


def _create_kw(variant: str, arch: str, pretrained: bool, kw_ratio: float, attention_norm: str | None = None,
               **kwargs):
    if pretrained:
        raise ValueError(f"{variant}: no weights can be downloaded here; build with pretrained=False and use "
                         "models.load_checkpoint(model, path) with a local checkpoint")
    kw_ratio = float(kw_ratio)
    kw_ratio = int(kw_ratio) if kw_ratio.is_integer() else kw_ratio
    settings = manager_settings(arch, kw_ratio)
    if attention_norm is not None:  # else the released norm: BatchNorm, LayerNorm for ConvNeXt
        settings["norm"] = attention_norm
    if "dropout" in kwargs and "drop_rate" in kwargs:
        raise ValueError("give either dropout or drop_rate, not both")
    dropout = kwargs.pop("dropout", kwargs.pop("drop_rate", 0.0))
    if arch.startswith("resnet"):
        model = build_model_with_cfg(ResNet, variant, False, depth=int(arch[6:]), conv=kw_conv,
                                     shortcut_conv=kw_strided_shortcut, dropout=dropout, **kwargs)
        warehouse_of = lambda name, layer: resnet_warehouse(name, model.depth >= 50)  # noqa: E731
    elif arch.startswith("convnext"):
        model = build_model_with_cfg(ConvNeXt, variant, False, conv=kw_patch_conv, dropout=dropout, **kwargs)
        warehouse_of = convnext_warehouse
    else:
        model = build_model_with_cfg(MobileNetV2, variant, False, width_mult=int(arch[-3:]) / 100, conv=kw_conv,
                                     stem_conv=kw_conv, dropout=dropout, **kwargs)
        half = kw_ratio == 0.5
        if half:
            head = model.classifier[1]
            model.classifier[1] = KWLinear(head.in_features, head.out_features, bias=True,
                                           device=head.weight.device, dtype=head.weight.dtype)
        else:
            _released_classifier_names(model)
        warehouse_of = mobilenetv2_warehouses(half)
    model.kw_ratio = kw_ratio
    return attach_warehouses(model, WarehouseManager(**settings), warehouse_of)


@register_model
def kw_resnet18(pretrained: bool = False, kw_ratio: float = 1, **kwargs) -> ResNet:
    """ResNet18 with KernelWarehouse convs (`kw_ratio` 1/4, 1/2, 1, 2 or 4; all five released)."""
    return _create_kw("kw_resnet18", "resnet18", pretrained, kw_ratio, **kwargs)


@register_model
def kw_resnet50(pretrained: bool = False, kw_ratio: float = 1, **kwargs) -> ResNet:
    """ResNet50 with KernelWarehouse convs (released: `kw_ratio` 1/2 with the non-local basis, 1, 4)."""
    return _create_kw("kw_resnet50", "resnet50", pretrained, kw_ratio, **kwargs)


@register_model
def kw_mobilenetv2_050(pretrained: bool = False, kw_ratio: float = 1, **kwargs) -> MobileNetV2:
    """MobileNetV2 (0.5x) with KernelWarehouse convs (released: `kw_ratio` 1/2, 1, 4; 2 by 4's rule)."""
    return _create_kw("kw_mobilenetv2_050", "mobilenetv2_050", pretrained, kw_ratio, **kwargs)


@register_model
def kw_mobilenetv2_100(pretrained: bool = False, kw_ratio: float = 1, **kwargs) -> MobileNetV2:
    """MobileNetV2 (1.0x) with KernelWarehouse convs (released: `kw_ratio` 1/2, 1, 4; 2 by 4's rule)."""
    return _create_kw("kw_mobilenetv2_100", "mobilenetv2_100", pretrained, kw_ratio, **kwargs)


@register_model
def kw_convnext_tiny(pretrained: bool = False, kw_ratio: float = 1, **kwargs) -> ConvNeXt:
    """ConvNeXt-T with KernelWarehouse convs (released: `kw_ratio` 1; 2 and 4 by its rule)."""
    return _create_kw("kw_convnext_tiny", "convnext_tiny", pretrained, kw_ratio, **kwargs)


KW_MODEL_NAMES = tuple("kw_" + arch for arch in KW_ARCHS)
KW_BUILDERS = {name: globals()[name] for name in KW_MODEL_NAMES}
