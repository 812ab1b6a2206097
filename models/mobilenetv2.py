"""MobileNetV2 (width 0.5/0.75/1.0), static or with every conv but the stem an ODConv (as released).

The first 3x3 conv and the classifier stay static; the final 1x1 conv to 1280 channels is an ODConv. Module
names match the released checkpoints (`features.N...`, `classifier.1`).
"""
from __future__ import annotations

from torch import Tensor, nn

from .layers import ConvFactory, init_static_layers, static_conv

# t (expansion), c (channels), n (repeats), s (stride of the first block)
INVERTED_RESIDUAL_SETTING = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


def make_divisible(v: float, divisor: int = 8) -> int:
    """Round channels to a multiple of `divisor`, never more than 10% below `v` (the TF reference rule)."""
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


class ConvBNReLU(nn.Sequential):
    def __init__(self, conv: ConvFactory, inp: int, oup: int, kernel_size: int = 3, stride: int = 1, groups: int = 1):
        super().__init__(conv(inp, oup, kernel_size, stride, groups), nn.BatchNorm2d(oup), nn.ReLU6(inplace=True))


class InvertedResidual(nn.Module):
    def __init__(self, inp: int, oup: int, stride: int, expand_ratio: int, conv: ConvFactory):
        super().__init__()
        hidden = int(round(inp * expand_ratio))
        self.use_res_connect = stride == 1 and inp == oup
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(ConvBNReLU(conv, inp, hidden, kernel_size=1))
        layers += [
            ConvBNReLU(conv, hidden, hidden, stride=stride, groups=hidden),  # depthwise
            conv(hidden, oup, 1),  # linear bottleneck
            nn.BatchNorm2d(oup),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


class MobileNetV2(nn.Module):
    """MobileNetV2 whose non-stem convs come from `conv` (static `nn.Conv2d` or `ODConv2d`)."""

    # Indices into `features` whose outputs feed a feature pyramid: 24, 32, 96 and 1280 (width 1.0) channels.
    STAGE_ENDS = (3, 6, 13, 18)

    def __init__(
        self,
        width_mult: float = 1.0,
        conv: ConvFactory = static_conv,
        num_classes: int = 1000,
        dropout: float = 0.2,
        in_chans: int = 3,
    ) -> None:
        super().__init__()
        if width_mult <= 0:
            raise ValueError(f"width_mult must be positive, got {width_mult}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.num_classes = num_classes
        inp = make_divisible(32 * width_mult)
        self.num_features = make_divisible(1280 * max(1.0, width_mult))
        features: list[nn.Module] = [ConvBNReLU(static_conv, in_chans, inp, stride=2)]
        for t, c, n, s in INVERTED_RESIDUAL_SETTING:
            oup = make_divisible(c * width_mult)
            for i in range(n):
                features.append(InvertedResidual(inp, oup, s if i == 0 else 1, t, conv))
                inp = oup
        features.append(ConvBNReLU(conv, inp, self.num_features, kernel_size=1))
        self.features = nn.Sequential(*features)
        self.feature_info = [
            dict(num_chs=self._out_channels(self.features[i]), reduction=r, module=f"features.{i}")
            for i, r in zip(self.STAGE_ENDS, (4, 8, 16, 32))
        ]
        head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        self.classifier = nn.Sequential(nn.Dropout(dropout), head)
        init_static_layers(self)

    @staticmethod
    def _out_channels(block: nn.Module) -> int:
        return [m for m in block.modules() if isinstance(m, nn.BatchNorm2d)][-1].num_features

    def forward_stages(self, x: Tensor) -> list[Tensor]:
        """Outputs after the stages with 24, 32, 96 and 1280 channels (strides 4, 8, 16, 32)."""
        outs = []
        start = 0
        for end in self.STAGE_ENDS:
            x = self.features[start : end + 1](x)
            outs.append(x)
            start = end + 1
        return outs

    def forward_features(self, x: Tensor) -> Tensor:
        return self.features(x)

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        x = nn.functional.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.classifier[0](x) if pre_logits else self.classifier(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Module:
        return self.classifier[1]

    def reset_classifier(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.classifier[1] = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
