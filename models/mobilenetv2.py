"""MobileNetV2 (width 0.5/0.75/1.0), static or with every conv but the stem dynamic (ODConv as released, CondConv,
DyConv), in every stage or in the stages named by `dynamic_stages`.

Stages are defined by output stride, as for ResNet: stage 1 = stride 4 (features 1-3: the stride-2 t=1 block joins
it, as nothing else runs at stride 2 but the stem), 2 = stride 8 (features 4-6), 3 = stride 16 (features 7-13),
4 = stride 32 (features 14-18, including the final 1x1 conv to 1280 channels). The first 3x3 conv (features 0) and
the classifier are always static. Module names match the released checkpoints (`features.N...`, `classifier.1`).
"""
# No `from __future__ import annotations` here: TorchScript of an FX-traced model reads the forward annotations
# as real types (timm's test_model_forward_fx_torchscript).
from typing import Any, Iterable, Optional

from timm.layers import create_classifier, make_divisible
from torch import Tensor, nn

from .layers import STAGES, ConvFactory, init_static_layers, stage_convs, static_conv

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

# Index into `features` of the last module of each stage (1..4): 24, 32, 96 and 1280 channels at width 1.0, the
# outputs a feature pyramid takes. Stage s holds features[STAGE_ENDS[s-2] + 1 .. STAGE_ENDS[s-1]] (stage 1 from 1).
STAGE_ENDS = (3, 6, 13, 18)

# The zoo's widths, by the name timm gives them.
WIDTHS = {"mobilenetv2_050": 0.5, "mobilenetv2_075": 0.75, "mobilenetv2_100": 1.0}


def stage_of(index: int) -> int:
    """The stage (1..4) of `features[index]` for index >= 1."""
    return 1 + sum(index > end for end in STAGE_ENDS[:-1])


class ConvBNReLU(nn.Sequential):
    def __init__(
        self, conv: ConvFactory, inp: int, oup: int, kernel_size: int = 3, stride: int = 1, groups: int = 1,
        device: Any = None, dtype: Any = None,
    ):
        dd = dict(device=device, dtype=dtype)
        super().__init__(
            conv(inp, oup, kernel_size, stride, groups, **dd), nn.BatchNorm2d(oup, **dd), nn.ReLU6(inplace=True)
        )


class InvertedResidual(nn.Module):
    def __init__(
        self, inp: int, oup: int, stride: int, expand_ratio: int, conv: ConvFactory,
        device: Any = None, dtype: Any = None,
    ):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        hidden = int(round(inp * expand_ratio))
        self.use_res_connect = stride == 1 and inp == oup
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(ConvBNReLU(conv, inp, hidden, kernel_size=1, **dd))
        layers += [
            ConvBNReLU(conv, hidden, hidden, stride=stride, groups=hidden, **dd),  # depthwise
            conv(hidden, oup, 1, **dd),  # linear bottleneck
            nn.BatchNorm2d(oup, **dd),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


class MobileNetV2(nn.Module):
    """MobileNetV2 whose non-stem convs come from `conv` (static `nn.Conv2d` or a dynamic conv) in the stages
    listed in `dynamic_stages`, and are static elsewhere; the stem conv comes from `stem_conv` (static, but for
    KernelWarehouse, models/kw.py).

    `dropout` (before the classifier) has no default here: the registry's builders decide it (models.registry).
    """

    STAGE_ENDS = STAGE_ENDS

    def __init__(
        self,
        width_mult: float = 1.0,
        conv: ConvFactory = static_conv,
        num_classes: int = 1000,
        *,
        dropout: float,
        dynamic_stages: Iterable[int] = STAGES,
        in_chans: int = 3,
        global_pool: str = "avg",
        stem_conv: ConvFactory = static_conv,
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        super().__init__()
        if width_mult <= 0:
            raise ValueError(f"width_mult must be positive, got {width_mult}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        convs = stage_convs(conv, dynamic_stages)
        dd = dict(device=device, dtype=dtype)
        self.num_classes = num_classes
        self.in_chans = in_chans  # timm's model contract (its tests check it; create_model passes it)
        # Widths rounded by timm's make_divisible (multiples of 8, never 10% below): the torchvision/TF rule.
        inp = make_divisible(32 * width_mult)
        self.num_features = make_divisible(1280 * max(1.0, width_mult))
        features: list[nn.Module] = [ConvBNReLU(stem_conv, in_chans, inp, stride=2, **dd)]
        for t, c, n, s in INVERTED_RESIDUAL_SETTING:
            oup = make_divisible(c * width_mult)
            for i in range(n):
                conv_here = convs[stage_of(len(features))]
                features.append(InvertedResidual(inp, oup, s if i == 0 else 1, t, conv_here, **dd))
                inp = oup
        features.append(ConvBNReLU(convs[stage_of(len(features))], inp, self.num_features, kernel_size=1, **dd))
        assert len(features) == STAGE_ENDS[-1] + 1
        self.features = nn.Sequential(*features)
        self.stage_ends = list(STAGE_ENDS)  # an attribute TorchScript can read (it cannot read a global tuple)
        self.feature_info = [
            dict(num_chs=self._out_channels(self.features[i]), reduction=r, module=f"features.{i}")
            for i, r in zip(STAGE_ENDS, (4, 8, 16, 32))
        ]
        self.global_pool, head = create_classifier(self.num_features, num_classes, pool_type=global_pool, **dd)
        self.head_hidden_size = self.num_features * self.global_pool.feat_mult()
        self.classifier = nn.Sequential(nn.Dropout(dropout), head)
        init_static_layers(self)

    @staticmethod
    def _out_channels(block: nn.Module) -> int:
        return [m for m in block.modules() if isinstance(m, nn.BatchNorm2d)][-1].num_features

    def forward_stages(self, x: Tensor) -> list[Tensor]:
        """Outputs after the stages with 24, 32, 96 and 1280 channels (strides 4, 8, 16, 32)."""
        outs = []
        # One loop over the Sequential (not slices of it), so that TorchScript can compile it.
        for i, block in enumerate(self.features):
            x = block(x)
            if i in self.stage_ends:
                outs.append(x)
        return outs

    def forward_features(self, x: Tensor) -> Tensor:
        return self.features(x)

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        x = self.classifier[0](self.global_pool(x))
        return x if pre_logits else self.classifier[1](x)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Module:
        return self.classifier[1]

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        """A new classifier (timm's signature); `global_pool=""` also removes the pooling (4D output)."""
        self.num_classes = num_classes
        pool = self.global_pool.pool_type if global_pool is None else global_pool
        ref = next(self.parameters())  # (a KernelWarehouse stem has no weight of its own)
        self.global_pool, self.classifier[1] = create_classifier(
            self.num_features, num_classes, pool_type=pool, device=ref.device, dtype=ref.dtype
        )
        self.head_hidden_size = self.num_features * self.global_pool.feat_mult()
