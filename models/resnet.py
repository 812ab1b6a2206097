"""ResNet18/34/50/101, static or with the convs inside the residual blocks dynamic (ODConv as released, CondConv,
DyConv), in every stage or in the stages named by `dynamic_stages` (layer1..layer4 = strides 4, 8, 16, 32).

The stem 7x7 conv, the 1x1 downsample convs and the classifier stay static. Module names match the released
checkpoints (`conv1`, `bn1`, `layer1.0.conv1`, ..., `fc`).
"""
# No `from __future__ import annotations` here: TorchScript of an FX-traced model reads the forward annotations
# as real types (timm's test_model_forward_fx_torchscript).
from typing import Any, Iterable, Optional, Type, Union

from timm.layers import DropPath, create_classifier
from torch import Tensor, nn

from .layers import STAGES, ConvFactory, init_static_layers, stage_convs, static_conv


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(
        self, inplanes: int, planes: int, stride: int, downsample: Optional[nn.Module], conv: ConvFactory,
        style: str = "pytorch", drop_path: float = 0.0, device: Any = None, dtype: Any = None,
    ):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.conv1 = conv(inplanes, planes, 3, stride, **dd)
        self.bn1 = nn.BatchNorm2d(planes, **dd)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv(planes, planes, 3, **dd)
        self.bn2 = nn.BatchNorm2d(planes, **dd)
        self.downsample = downsample
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(self.drop_path(out) + identity)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(
        self, inplanes: int, planes: int, stride: int, downsample: Optional[nn.Module], conv: ConvFactory,
        style: str = "pytorch", drop_path: float = 0.0, device: Any = None, dtype: Any = None,
    ):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        # "pytorch" (ResNet v1.5, torchvision, the released code): stride on the 3x3. "caffe" (He et al.'s v1,
        # mmdet's style='caffe'): stride on the first 1x1; the published baseline MACs are counted this way.
        s1, s3 = (stride, 1) if style == "caffe" else (1, stride)
        self.conv1 = conv(inplanes, planes, 1, s1, **dd)
        self.bn1 = nn.BatchNorm2d(planes, **dd)
        self.conv2 = conv(planes, planes, 3, s3, **dd)
        self.bn2 = nn.BatchNorm2d(planes, **dd)
        self.conv3 = conv(planes, planes * self.expansion, 1, **dd)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion, **dd)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(self.drop_path(out) + identity)


Block = Type[Union[BasicBlock, Bottleneck]]

# depth -> (block, blocks per stage); one table serves the whole family, as in mmdet's ResNet.
ARCH_SETTINGS: dict[int, tuple[Block, tuple[int, int, int, int]]] = {
    18: (BasicBlock, (2, 2, 2, 2)),
    34: (BasicBlock, (3, 4, 6, 3)),
    50: (Bottleneck, (3, 4, 6, 3)),
    101: (Bottleneck, (3, 4, 23, 3)),
}


class ResNet(nn.Module):
    """ResNet whose block convs come from `conv` (static `nn.Conv2d` or a dynamic conv) in the stages listed in
    `dynamic_stages`, and are static elsewhere; the 1x1 shortcut convs come from `shortcut_conv` (static, but for
    KernelWarehouse's strided shortcuts, models/kw.py).

    `dropout` (before the classifier) has no default here: the registry's builders decide it (models.registry).
    `drop_path_rate`: stochastic depth on every residual branch at one rate (KernelWarehouse's recipe; 0 = none).
    """

    def __init__(
        self,
        depth: int,
        conv: ConvFactory = static_conv,
        num_classes: int = 1000,
        *,
        dropout: float,
        dynamic_stages: Iterable[int] = STAGES,
        in_chans: int = 3,
        global_pool: str = "avg",
        style: str = "pytorch",
        shortcut_conv: ConvFactory = static_conv,
        drop_path_rate: float = 0.0,
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        super().__init__()
        if depth not in ARCH_SETTINGS:
            raise ValueError(f"depth must be one of {sorted(ARCH_SETTINGS)}, got {depth}")
        if style not in ("pytorch", "caffe"):
            raise ValueError(f"style must be 'pytorch' or 'caffe', got {style!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        if not 0.0 <= drop_path_rate < 1.0:
            raise ValueError(f"drop_path_rate must be in [0, 1), got {drop_path_rate}")
        convs = stage_convs(conv, dynamic_stages)
        dd = dict(device=device, dtype=dtype)
        self.drop_path_rate = drop_path_rate
        block, layers = ARCH_SETTINGS[depth]
        self.depth = depth
        self.num_classes = num_classes
        self.in_chans = in_chans  # timm's model contract (its tests check it; create_model passes it)
        self.inplanes = 64
        self.conv1 = nn.Conv2d(in_chans, 64, kernel_size=7, stride=2, padding=3, bias=False, **dd)
        self.bn1 = nn.BatchNorm2d(64, **dd)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.feature_info = []
        for i, (planes, blocks) in enumerate(zip((64, 128, 256, 512), layers)):
            stride = 1 if i == 0 else 2
            layer = self._make_layer(block, planes, blocks, stride, convs[i + 1], shortcut_conv, style, dd)
            setattr(self, f"layer{i + 1}", layer)
            self.feature_info.append(dict(num_chs=planes * block.expansion, reduction=4 * 2**i, module=f"layer{i + 1}"))
        self.num_features = 512 * block.expansion
        self.dropout = nn.Dropout(p=dropout)
        self.global_pool, self.fc = create_classifier(self.num_features, num_classes, pool_type=global_pool, **dd)
        self.head_hidden_size = self.num_features * self.global_pool.feat_mult()
        init_static_layers(self)
        del self.inplanes

    def _make_layer(
        self, block: Block, planes: int, blocks: int, stride: int, conv: ConvFactory, shortcut_conv: ConvFactory,
        style: str, dd: dict,
    ) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                shortcut_conv(self.inplanes, planes * block.expansion, 1, stride, **dd),
                nn.BatchNorm2d(planes * block.expansion, **dd),
            )
        dp = self.drop_path_rate  # one rate for every block, as KernelWarehouse's released ResNet
        layers = [block(self.inplanes, planes, stride, downsample, conv, style, dp, **dd)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes, 1, None, conv, style, dp, **dd) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward_stages(self, x: Tensor) -> list[Tensor]:
        """Outputs of layer1..layer4 (strides 4, 8, 16, 32): what a feature pyramid takes."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        # Written out, not getattr(self, f"layer{i}"), so that TorchScript can compile it.
        c2 = self.layer1(x)
        c3 = self.layer2(c2)
        c4 = self.layer3(c3)
        c5 = self.layer4(c4)
        return [c2, c3, c4, c5]

    def forward_features(self, x: Tensor) -> Tensor:
        return self.forward_stages(x)[-1]

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        x = self.dropout(self.global_pool(x))
        return x if pre_logits else self.fc(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        """A new classifier (timm's signature); `global_pool=""` also removes the pooling (4D output)."""
        self.num_classes = num_classes
        pool = self.global_pool.pool_type if global_pool is None else global_pool
        device, dtype = self.conv1.weight.device, self.conv1.weight.dtype
        self.global_pool, self.fc = create_classifier(
            self.num_features, num_classes, pool_type=pool, device=device, dtype=dtype
        )
        self.head_hidden_size = self.num_features * self.global_pool.feat_mult()
