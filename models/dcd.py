"""The DCD networks as released (github.com/liyunsheng13/dcd, models/imagenet/): ResNet18/34/50/101 and MobileNetV2,
with the released module names, so the released checkpoints load strictly.

- `DCDResNet` is the zoo's `ResNet` with every residual-block conv a `DCDConv2d` (injected through the conv
  factory: the pooled variant in the BasicBlock nets, as released) and the dynamic classifier
  ``classifier = Sequential(Dropout, DCDLinear)`` in place of ``fc``. Stem and shortcut convs stay static.
- `DCDMobileNetV2` keeps the released layout, which is not the zoo's MobileNetV2's: flat blocks
  (``features.N.conv.{0..7}``) and the last 1x1 conv outside ``features`` (``conv``). The pw and pw-linear convs
  of the expanding (t = 6) blocks are `DCDModule`s; the stem, the depthwise convs, the t = 1 block and the last
  1x1 conv are static.
"""
# No `from __future__ import annotations` here (see models/resnet.py: TorchScript reads the annotations).
from typing import Any, Optional

from timm.layers import create_classifier, make_divisible
from torch import Tensor, nn

from odconv import DCDLinear, DCDModule

from .mobilenetv2 import INVERTED_RESIDUAL_SETTING, STAGE_ENDS
from .resnet import ResNet


def _dcd_head(num_features: int, num_classes: int, device: Any, dtype: Any) -> nn.Module:
    return DCDLinear(num_features, num_classes, device=device, dtype=dtype) if num_classes > 0 else nn.Identity()


class DCDResNet(ResNet):
    """ResNet with DCD convs (`conv` = a DynamicConvFactory of kind "dcd") and the released dynamic classifier
    ``classifier.1`` after ``classifier.0`` (dropout), as the released `ResNet_dcd` built with a dropout."""

    def __init__(self, depth: int, conv, num_classes: int = 1000, *, dropout: float, device: Any = None,
                 dtype: Any = None, **kwargs: Any) -> None:
        super().__init__(depth, conv, num_classes, dropout=dropout, device=device, dtype=dtype, **kwargs)
        del self.fc, self.dropout
        self.classifier = nn.Sequential(nn.Dropout(dropout), _dcd_head(self.num_features, num_classes, device, dtype))

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        x = self.classifier[0](self.global_pool(x))
        return x if pre_logits else self.classifier[1](x)

    def get_classifier(self) -> nn.Module:
        return self.classifier[1]

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        """A new (dynamic) classifier; `global_pool=""` also removes the pooling (4D output)."""
        self.num_classes = num_classes
        w = self.conv1.weight
        if global_pool is not None:
            self.global_pool, _ = create_classifier(self.num_features, 0, pool_type=global_pool)
            self.head_hidden_size = self.num_features * self.global_pool.feat_mult()
        self.classifier[1] = _dcd_head(self.num_features, num_classes, w.device, w.dtype)


class DCDInvertedResidual(nn.Module):
    """The released block (`InvertedResidual` with dy=True): pw, BN, ReLU6, dw, BN, ReLU6, pw-linear, BN in one
    Sequential; pw and pw-linear are DCD modules when the block expands, all static in the t = 1 block."""

    def __init__(self, inp: int, oup: int, stride: int, expand_ratio: int, fc_squeeze: int,
                 device: Any = None, dtype: Any = None):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        hidden = int(round(inp * expand_ratio))
        self.use_res_connect = stride == 1 and inp == oup
        dw = [nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False, **dd),
              nn.BatchNorm2d(hidden, **dd), nn.ReLU6(inplace=True)]
        if expand_ratio == 1:
            layers = dw + [nn.Conv2d(hidden, oup, 1, bias=False, **dd), nn.BatchNorm2d(oup, **dd)]
        else:
            layers = [DCDModule(inp, hidden, fc_squeeze, **dd), nn.BatchNorm2d(hidden, **dd), nn.ReLU6(inplace=True),
                      *dw, DCDModule(hidden, oup, fc_squeeze, **dd), nn.BatchNorm2d(oup, **dd)]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


def _conv_bn_relu6(inp: int, oup: int, kernel_size: int, stride: int, dd: dict) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(inp, oup, kernel_size, stride, (kernel_size - 1) // 2, bias=False, **dd),
                         nn.BatchNorm2d(oup, **dd), nn.ReLU6(inplace=True))


class DCDMobileNetV2(nn.Module):
    """The released `MobileNetV2_dcd`. Stages by output stride as the zoo's MobileNetV2: features 1-3 (stride 4),
    4-6 (8), 7-13 (16), then 14-17 and the last conv (32). `fc_squeeze` divides the DCD modules' trunk width: 16
    in the released commands and checkpoint (the released constructor's default is 8)."""

    def __init__(
        self,
        width_mult: float = 1.0,
        num_classes: int = 1000,
        *,
        dropout: float,
        fc_squeeze: int = 16,
        in_chans: int = 3,
        global_pool: str = "avg",
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        super().__init__()
        if width_mult <= 0:
            raise ValueError(f"width_mult must be positive, got {width_mult}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        dd = dict(device=device, dtype=dtype)
        self.num_classes = num_classes
        self.in_chans = in_chans
        inp = make_divisible(32 * width_mult)
        features: list[nn.Module] = [_conv_bn_relu6(in_chans, inp, 3, 2, dd)]
        for t, c, n, s in INVERTED_RESIDUAL_SETTING:
            oup = make_divisible(c * width_mult)
            for i in range(n):
                features.append(DCDInvertedResidual(inp, oup, s if i == 0 else 1, t, fc_squeeze, **dd))
                inp = oup
        self.features = nn.Sequential(*features)
        self.num_features = make_divisible(1280 * max(1.0, width_mult))
        self.conv = _conv_bn_relu6(inp, self.num_features, 1, 1, dd)
        self.stage_ends = list(STAGE_ENDS[:-1])  # the fourth stage ends with `conv`
        chans = [make_divisible(c * width_mult) for c in (24, 32, 96)]
        self.feature_info = [dict(num_chs=c, reduction=r, module=f"features.{i}")
                             for c, r, i in zip(chans, (4, 8, 16), self.stage_ends)]
        self.feature_info.append(dict(num_chs=self.num_features, reduction=32, module="conv.2"))
        self.global_pool, _ = create_classifier(self.num_features, 0, pool_type=global_pool)
        self.head_hidden_size = self.num_features * self.global_pool.feat_mult()
        self.classifier = nn.Sequential(nn.Dropout(dropout), _dcd_head(self.num_features, num_classes, **dd))
        self._init_weights()

    def _init_weights(self) -> None:
        # The released `_initialize_weights`, over every module, the DCD modules' insides included: He (fan_out)
        # convs, unit BatchNorm2d, N(0, 0.01) linear layers with zero bias.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward_stages(self, x: Tensor) -> list[Tensor]:
        """Outputs with 24, 32, 96 and 1280 channels (strides 4, 8, 16, 32)."""
        outs = []
        for i, block in enumerate(self.features):
            x = block(x)
            if i in self.stage_ends:
                outs.append(x)
        outs.append(self.conv(x))
        return outs

    def forward_features(self, x: Tensor) -> Tensor:
        return self.conv(self.features(x))

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        x = self.classifier[0](self.global_pool(x))
        return x if pre_logits else self.classifier[1](x)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Module:
        return self.classifier[1]

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        """A new (dynamic) classifier; `global_pool=""` also removes the pooling (4D output)."""
        self.num_classes = num_classes
        w = self.features[0][0].weight
        if global_pool is not None:
            self.global_pool, _ = create_classifier(self.num_features, 0, pool_type=global_pool)
            self.head_hidden_size = self.num_features * self.global_pool.feat_mult()
        self.classifier[1] = _dcd_head(self.num_features, num_classes, w.device, w.dtype)
