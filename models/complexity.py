"""Count parameters and multiply-accumulates (MACs) of a model at a given input size, ODConv's dynamic parts included.

Convention (stated in the README): MACs of convolutions and fully connected layers, as the usual counters
(fvcore, torchvision's tables) count a static network, plus every multiply-add that an ODConv layer really does:
the global average pool (one per input element), the squeeze 1x1 conv and the four heads, the per-sample kernel
aggregation (K multiply-adds per kernel weight when K > 1, one more for the spatial attention), and the channel and
filter attentions applied to the input and output maps. BatchNorm, activations, softmax and pooling elsewhere
are not counted (nor by the usual counters).
"""
from __future__ import annotations

from torch import Tensor, nn

from odconv import ODConv2d


def odconv_macs(layer: ODConv2d, x: Tensor, y: Tensor) -> dict[str, int]:
    """MACs of one ODConv layer for one sample, split into the static conv and the dynamic parts."""
    c, h, w = x.shape[1:]
    o, ho, wo = y.shape[1:]
    kh, kw = layer.kernel_size
    kernel_size = o * (c // layer.groups) * kh * kw  # weights of one aggregated kernel
    att = layer.attention
    hidden = att.fc.out_channels
    heads = sum(m.out_channels for m in (att.channel_fc, att.filter_fc, att.spatial_fc, att.kernel_fc) if m is not None)
    aggregation = 0
    if att.kernel_fc is not None:
        aggregation += layer.kernel_num * kernel_size
    if att.spatial_fc is not None:
        aggregation += kernel_size
    return {
        "conv": kernel_size * ho * wo,
        "attention": c * h * w + c * hidden + hidden * heads,
        "aggregation": aggregation,
        "products": c * h * w + (o * ho * wo if att.filter_fc is not None else 0),
    }


def count_macs(model: nn.Module, input_size: tuple[int, int, int] = (3, 224, 224)) -> dict[str, int]:
    """MACs for one sample, by kind: 'conv' (static convs + ODConv's main convs), 'linear', and ODConv's
    'attention', 'aggregation' and 'products'; 'total' is their sum."""
    import torch

    totals = dict(conv=0, linear=0, attention=0, aggregation=0, products=0)
    inside_odconv = {id(m) for od in model.modules() if isinstance(od, ODConv2d) for m in od.modules() if m is not od}

    def hook(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
        x = inputs[0]
        if isinstance(module, ODConv2d):
            for k, v in odconv_macs(module, x, output).items():
                totals[k] += v
        elif isinstance(module, nn.Conv2d):
            totals["conv"] += output[0].numel() * (module.in_channels // module.groups) * module.weight[0, 0].numel()
        elif isinstance(module, nn.Linear):
            totals["linear"] += module.in_features * module.out_features

    handles = [
        m.register_forward_hook(hook)
        for m in model.modules()
        if id(m) not in inside_odconv and isinstance(m, (ODConv2d, nn.Conv2d, nn.Linear))
    ]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, *input_size))
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    totals["total"] = sum(totals.values())
    return totals


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
