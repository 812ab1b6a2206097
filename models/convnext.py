"""ConvNeXt-T (Liu et al., "A ConvNet for the 2020s", CVPR 2022) as KernelWarehouse trains it, with its convs from a
conv factory: the static network (`static_convnext_tiny`) and KernelWarehouse's (`kw_convnext_tiny`, models/kw.py)
are this one definition.

Module names are those of the released code (OSVAI/KernelWarehouse models/convnext.py and kw_convnext.py, which
follow facebookresearch/ConvNeXt): `downsample_layers.0` (4x4 stride-4 stem conv, LayerNorm), `downsample_layers.1-3`
(LayerNorm, 2x2 stride-2 conv), `stages.i.j.{dwconv, norm, pwconv1, pwconv2, gamma}`, `norm` (after global average
pooling) and `head`. Every conv has a bias. The pointwise layers are 1x1 convs over channels-first maps and layer
scale `gamma` has shape (1, C, 1, 1), as the KW release; the static release computes the same map with `nn.Linear`
over channels-last maps and a (C,) gamma, so the static twin writes and reads its state dict in those shapes
(state-dict hooks) and a released static checkpoint loads as it is.
"""
from __future__ import annotations

from typing import Any, Protocol

import torch
from timm.layers import DropPath, LayerNorm2d, trunc_normal_
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from torch import Tensor, nn

from .registry import _cfg

DEPTHS_TINY, DIMS_TINY = (3, 3, 9, 3), (96, 192, 384, 768)


class PatchConvFactory(Protocol):
    """ConvNeXt's convs: explicit padding (the 4x4 and 2x2 patchify convs have none), always with a bias."""

    def __call__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, groups: int = 1,
                 padding: int = 0, *, device: Any = None, dtype: Any = None) -> nn.Module: ...


def static_conv_bias(in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, groups: int = 1,
                     padding: int = 0, *, device: Any = None, dtype: Any = None) -> nn.Module:
    return nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, groups=groups, bias=True,
                     device=device, dtype=dtype)


class Block(nn.Module):
    """dwconv 7x7 -> LayerNorm over channels -> pwconv1 (x4) -> GELU -> pwconv2 -> layer scale -> drop path, + input."""

    def __init__(self, dim: int, conv: PatchConvFactory, drop_path: float, layer_scale_init_value: float,
                 dd: dict) -> None:
        super().__init__()
        self.dwconv = conv(dim, dim, 7, 1, dim, 3, **dd)
        self.norm = LayerNorm2d(dim, eps=1e-6, **dd)
        self.pwconv1 = conv(dim, 4 * dim, 1, **dd)
        self.act = nn.GELU()
        self.pwconv2 = conv(4 * dim, dim, 1, **dd)
        self.gamma = nn.Parameter(torch.full((1, dim, 1, 1), layer_scale_init_value, **dd)) \
            if layer_scale_init_value > 0 else None
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        y = self.pwconv2(self.act(self.pwconv1(self.norm(self.dwconv(x)))))
        if self.gamma is not None:
            y = self.gamma * y
        return x + self.drop_path(y)


class ConvNeXt(nn.Module):
    """ConvNeXt whose stem, downsampling, depthwise and pointwise convs all come from `conv`.

    `drop_path_rate` rises linearly from 0 at the first block to the rate at the last (as released); `dropout`
    before the classifier is 0 in the released recipe (its `--dropout` is not passed to ConvNeXt).
    """

    def __init__(
        self, conv: PatchConvFactory = static_conv_bias, num_classes: int = 1000, *, depths=DEPTHS_TINY,
        dims=DIMS_TINY, in_chans: int = 3, global_pool: str = "avg", dropout: float = 0.0,
        drop_path_rate: float = 0.0, layer_scale_init_value: float = 1e-6, head_init_scale: float = 1.0,
        device: Any = None, dtype: Any = None,
    ) -> None:
        super().__init__()
        if not 0.0 <= drop_path_rate < 1.0:
            raise ValueError(f"drop_path_rate must be in [0, 1), got {drop_path_rate}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        dd = dict(device=device, dtype=dtype)
        self.num_classes, self.in_chans = num_classes, in_chans
        self.downsample_layers = nn.ModuleList([nn.Sequential(conv(in_chans, dims[0], 4, 4, **dd),
                                                              LayerNorm2d(dims[0], eps=1e-6, **dd))])
        for i in range(3):
            self.downsample_layers.append(nn.Sequential(LayerNorm2d(dims[i], eps=1e-6, **dd),
                                                        conv(dims[i], dims[i + 1], 2, 2, **dd)))
        rates = torch.linspace(0, drop_path_rate, sum(depths), device="cpu").tolist()  # as released (float32)
        self.stages = nn.ModuleList()
        self.feature_info = []
        for i, (depth, dim) in enumerate(zip(depths, dims)):
            first = sum(depths[:i])
            self.stages.append(nn.Sequential(*[Block(dim, conv, rates[first + j], layer_scale_init_value, dd)
                                               for j in range(depth)]))
            self.feature_info.append(dict(num_chs=dim, reduction=4 * 2**i, module=f"stages.{i}"))
        self.num_features = self.head_hidden_size = dims[-1]
        self.norm = nn.LayerNorm(dims[-1], eps=1e-6, **dd)
        self.head_drop = nn.Dropout(dropout)
        self.global_pool = ""
        self.head: nn.Module = nn.Identity()
        self.reset_classifier(num_classes, global_pool)
        # As released: truncated normal (std .02) for the static convs and linear layers, zero biases; KW layers
        # are initialised when their warehouses are allocated.
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        if isinstance(self.head, nn.Linear):
            with torch.no_grad():
                self.head.weight.mul_(head_init_scale)
                self.head.bias.mul_(head_init_scale)

    def forward_stages(self, x: Tensor) -> list[Tensor]:
        """Outputs of the four stages (strides 4, 8, 16, 32)."""
        outs = []
        for downsample, stage in zip(self.downsample_layers, self.stages):
            x = stage(downsample(x))
            outs.append(x)
        return outs

    def forward_features(self, x: Tensor) -> Tensor:
        return self.forward_stages(x)[-1]

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        if self.global_pool == "avg":
            x = self.norm(x.mean((-2, -1)))
        else:  # unpooled (num_classes 0): the final norm at every position
            x = self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """A new classifier (timm's signature); `global_pool` "avg" or "" (no pooling, only with num_classes 0)."""
        pool = self.global_pool if global_pool is None else global_pool
        if pool not in ("avg", ""):
            raise ValueError(f"global_pool must be 'avg' or '', got {pool!r}")
        if pool == "" and num_classes:
            raise ValueError("global_pool '' (unpooled features) needs num_classes 0")
        self.num_classes, self.global_pool = num_classes, pool
        dd = dict(device=self.norm.weight.device, dtype=self.norm.weight.dtype)
        self.head = nn.Linear(self.num_features, num_classes, **dd) if num_classes else nn.Identity()


def released_static_layout(model: ConvNeXt) -> None:
    """State dicts in the static release's shapes: pointwise `nn.Linear` weights (out, in) and gamma (C,)."""
    def pointwise_or_gamma(key: str) -> bool:
        return key.endswith((".pwconv1.weight", ".pwconv2.weight", ".gamma"))

    def save(module, state, prefix, local_metadata):
        for k in [k for k in state if k.startswith(prefix) and pointwise_or_gamma(k[len(prefix):])]:
            state[k] = state[k].flatten(1) if k.endswith(".weight") else state[k].flatten()

    def load(module, state, prefix, *args):
        for k in [k for k in state if k.startswith(prefix) and pointwise_or_gamma(k[len(prefix):])]:
            v = state[k]
            if k.endswith(".weight") and v.dim() == 2:
                state[k] = v[:, :, None, None]
            elif k.endswith(".gamma") and v.dim() == 1:
                state[k] = v.view(1, -1, 1, 1)
    model.register_state_dict_post_hook(save)
    model.register_load_state_dict_pre_hook(load)


def convnext_cfg(**kwargs) -> dict[str, Any]:
    return dict(_cfg("downsample_layers.0.0", "head"), **kwargs)


default_cfgs = generate_default_cfgs({"static_convnext_tiny": convnext_cfg()})


@register_model
def static_convnext_tiny(pretrained: bool = False, **kwargs) -> ConvNeXt:
    """ConvNeXt-T with plain convs, KernelWarehouse's baseline (released models/convnext.py; 28.59M parameters).
    `drop_rate` (timm's name) is the dropout before the classifier."""
    if pretrained:
        raise ValueError("static_convnext_tiny: no weights can be downloaded here; build with pretrained=False and "
                         "use models.load_checkpoint(model, path) with a local checkpoint")
    if "drop_rate" in kwargs:
        kwargs["dropout"] = kwargs.pop("drop_rate")
    model = build_model_with_cfg(ConvNeXt, "static_convnext_tiny", False, **kwargs)
    released_static_layout(model)
    return model
