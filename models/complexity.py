"""Count parameters and multiply-accumulates (MACs) of a model at a given input size, dynamic convs included.

`count_params` is the project's one parameter counter (training summaries, throughput, detection, the complexity
table call it): every parameter once (shared ones once), trainable or frozen, buffers (BatchNorm statistics) not
counted, as the paper's and torchvision's tables count. It needs shapes only, so models built on the meta device
count too.

MAC convention (stated in the README): MACs of convolutions and fully connected layers, as the usual counters
(fvcore, torchvision's tables) count a static network, plus every multiply-add that a dynamic conv (ODConv,
CondConv, DyConv) really does: the global average pool (one per input element), the routing/attention layers
on the pooled vector, the per-sample kernel aggregation (K multiply-adds per kernel weight when K > 1, one more
for ODConv's spatial attention; n per kernel weight for KernelWarehouse, whose kernel mixes n warehouse cells), and
ODConv's channel and filter attentions applied to the input and output maps.
BatchNorm, activations, softmax and pooling elsewhere are not counted (nor by the usual counters).

DCD layers (odconv/dcd.py) are counted whole, the same way: their static conv or classifier ('conv' / 'linear'),
the pooled input and the trunk's linear layers ('attention'), the per-channel scale applied to the static output
('products'), and the low-rank path on the feature maps, Q, Phi(x) and P ('low_rank': L(C_in + L + C_out) per
output position).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from odconv import DCD_LAYERS, DCDLinear, DynamicConv2d, KWConvNd


def count_params(model: nn.Module) -> int:
    """Number of parameters of `model`, each counted once (the figure the paper's tables give, in units)."""
    return sum(p.numel() for p in model.parameters())


def _attention_layer_macs(attention: nn.Module) -> int:
    # Every linear map of a routing/attention branch acts on the pooled (B, C) vector: in x out per sample.
    macs = 0
    for m in attention.modules():
        if isinstance(m, nn.Linear):
            macs += m.in_features * m.out_features
        elif isinstance(m, nn.Conv2d):
            macs += (m.in_channels // m.groups) * m.out_channels * m.weight[0, 0].numel()
    return macs


def dynamic_conv_macs(layer: DynamicConv2d, x: Tensor, y: Tensor) -> dict[str, int]:
    """MACs of one dynamic conv for one sample, split into the conv itself and the dynamic parts."""
    c, h, w = x.shape[1:]
    o, ho, wo = y.shape[1:]
    kh, kw = layer.kernel_size
    kernel_size = o * (c // layer.groups) * kh * kw  # weights of one aggregated kernel
    att = layer.attention
    aggregation = 0
    if layer.kernel_num > 1:
        aggregation += layer.kernel_num * kernel_size
    if getattr(att, "spatial_fc", None) is not None:
        aggregation += kernel_size
    products = 0
    if getattr(att, "channel_fc", None) is not None:
        products += c * h * w
    if getattr(att, "filter_fc", None) is not None:
        products += o * ho * wo
    return {
        "conv": kernel_size * ho * wo,
        "attention": c * h * w + _attention_layer_macs(att),
        "aggregation": aggregation,
        "products": products,
    }


def kw_conv_macs(layer: KWConvNd, x: Tensor, y: Tensor) -> dict[str, int]:
    """MACs of one KernelWarehouse conv for one sample: the conv, the attention (pool and its linear layers) and
    the kernel assembly, where every kernel weight is a mix of the warehouse's n cells (n multiply-adds)."""
    kernel_size = math.prod(layer.weight_shape)
    return {
        "conv": kernel_size * (y[0].numel() // layer.out_channels),
        "attention": x[0].numel() + _attention_layer_macs(layer.attention),
        "aggregation": layer.attention.num_cells * kernel_size,
        "products": 0,
    }


def dcd_macs(layer: nn.Module, x: Tensor, y: Tensor) -> dict[str, int]:
    """MACs of one DCD layer (DCDConv2d, DCDModule or DCDLinear) for one sample, split as `count_macs` reports."""
    trunk = sum(m.in_features * m.out_features for m in layer.modules() if isinstance(m, nn.Linear)
                and m not in (getattr(layer, n, None) for n in ("cls", "cls_q", "cls_p")))
    dim = layer.dim
    if isinstance(layer, DCDLinear):
        c, o = layer.in_features, layer.out_features
        return {"linear": c * o, "attention": trunk, "products": o, "low_rank": dim * (c + dim + o)}
    c, h, w = x.shape[1:]
    o, ho, wo = y.shape[1:]
    kh, kw = layer.kernel_size
    return {
        "conv": o * c * kh * kw * ho * wo,
        "attention": c * h * w + trunk,
        "products": o * ho * wo,
        "low_rank": dim * (c + dim + o) * ho * wo,
    }


def count_macs(model: nn.Module, input_size: tuple[int, int, int] = (3, 224, 224)) -> dict[str, int]:
    """MACs for one sample, by kind: 'conv' (static convs + the dynamic convs' main convs), 'linear', and the
    dynamic convs' 'attention', 'aggregation', 'products' and (DCD) 'low_rank'; 'total' is their sum."""
    totals = dict(conv=0, linear=0, attention=0, aggregation=0, products=0, low_rank=0)
    dynamic = (DynamicConv2d, KWConvNd)
    units = (*dynamic, *DCD_LAYERS)  # counted whole, by the rules above
    inside_dynamic = {
        id(m) for d in model.modules() if isinstance(d, units) for m in d.modules() if m is not d
    }

    def hook(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
        x = inputs[0]
        if isinstance(module, dynamic):
            layer_macs = dynamic_conv_macs if isinstance(module, DynamicConv2d) else kw_conv_macs
            for k, v in layer_macs(module, x, output).items():
                totals[k] += v
        elif isinstance(module, DCD_LAYERS):
            for k, v in dcd_macs(module, x, output).items():
                totals[k] += v
        elif isinstance(module, nn.Conv2d):
            totals["conv"] += output[0].numel() * (module.in_channels // module.groups) * module.weight[0, 0].numel()
        elif isinstance(module, nn.Linear):
            totals["linear"] += module.in_features * module.out_features

    handles = [
        m.register_forward_hook(hook)
        for m in model.modules()
        if id(m) not in inside_dynamic and isinstance(m, (*units, nn.Conv2d, nn.Linear))
    ]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            p = next(model.parameters())
            model(torch.zeros(1, *input_size, device=p.device, dtype=p.dtype))
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    totals["total"] = sum(totals.values())
    return totals
