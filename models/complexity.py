"""Count parameters and multiply-accumulates (MACs) of a model at a given input size, every dynamic conv of the
family included (ODConv, CondConv, DyConv in 1-D, 2-D and 3-D; KernelWarehouse; DCD; FDConv).

`count_params` is the project's one parameter counter (training summaries, throughput, detection, the complexity
table call it): every parameter once (shared ones once), trainable or frozen, buffers (BatchNorm statistics) not
counted, as the paper's and torchvision's tables count. It needs shapes only, so models built on the meta device
count too.

`count_macs` counts one sample, by kind; the convention is stated in full in docs/family.md ("What a MAC counts").
In short: convolutions (1-D, 2-D, 3-D) and fully connected layers as the usual counters (fvcore, torchvision's
tables) count a static network, plus every multiply-add that a dynamic conv really does, in four parts:
- 'attention': the global average pool (one per input element) and the linear maps of the routing/attention
  branch on the pooled vector (KernelWarehouse's non-local basis map once per mixture; FDConv's local 1-D conv
  once per input channel);
- 'aggregation' (kernel assembly): building each sample's kernel. ODConv/CondConv/DyConv: K multiply-adds per
  kernel weight when K > 1, one more for ODConv's spatial attention. KernelWarehouse: n per kernel weight (the
  warehouse's n cells). FDConv: the band gates on the spectrum (one real multiply per real and imaginary part),
  the inverse FFT (see `fft_macs`), one multiply per kernel weight for each gate applied to the kernel (spatial,
  local, and channel/filter where the layer applies them to the kernel);
- 'products': attentions applied to feature maps (ODConv's channel and filter attentions, one multiply per input
  and output element; FDConv's where it applies them to the features; DCD's per-channel scale);
- 'low_rank': DCD's low-rank path on the feature maps (Q, Phi(x), P: L(C_in + L + C_out) per output position);
- 'frequency': FDConv's frequency band modulation of the input (the input's FFT, then per band an inverse FFT, a
  3x3 gate conv and one multiply per input element).
BatchNorm, LayerNorm, activations, softmax, constant scalings that fold into parameters, 0/1 masks and pooling
elsewhere are not counted (nor by the usual counters).

Counting runs the model once on a zero input with forward hooks; the dynamic layers are not run (their output
shape follows from their geometry, and their count from the input and output shapes). Build the model with
`build_on_meta` and nothing is computed or allocated, only shapes flow (scripts/complexity.py does).
"""
from __future__ import annotations

import contextlib
import functools
import math
from typing import Callable, Iterator

import torch
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from odconv import DCD_LAYERS, DCDLinear, DynamicConvNd, FDConv2d, KWConvNd

STATIC_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
KINDS = ("conv", "linear", "attention", "aggregation", "products", "low_rank", "frequency")


def count_params(model: nn.Module) -> int:
    """Number of parameters of `model`, each counted once (the figure the paper's tables give, in units)."""
    return sum(p.numel() for p in model.parameters())


def fft_macs(rows: int, cols: int) -> int:
    """MACs of one real 2-D FFT, forward or inverse, of a rows x cols real signal: N log2 N for N = rows * cols.

    A convention, not a measured count (libraries differ): a radix-2 complex FFT of N points has (N/2) log2 N
    butterflies of one complex multiply-add (4 real MACs), 2 N log2 N MACs; a real transform costs half that.
    FFTW's flop convention (5 N log2 N flops for a complex transform) would give a quarter more."""
    n = rows * cols
    return round(n * math.log2(n)) if n > 1 else 0


def _positions(t: Tensor) -> int:
    """Spatial positions of one sample of a (B, C, *spatial) tensor."""
    return math.prod(t.shape[2:])


def _linear_map_macs(module: nn.Module) -> int:
    """MACs of one application of a Linear, or of a conv to a single position (a 1x1 map: in x out x taps)."""
    if isinstance(module, nn.Linear):
        return module.in_features * module.out_features
    return (module.in_channels // module.groups) * module.out_channels * math.prod(module.kernel_size)


def _attention_layer_macs(attention: nn.Module) -> int:
    # Every linear map of a routing/attention branch acts on the pooled (B, C) vector: in x out per sample.
    return sum(_linear_map_macs(m) for m in attention.modules() if isinstance(m, (nn.Linear, *STATIC_CONVS)))


def static_conv_macs(conv: nn.Module, y: Tensor) -> int:
    """A static conv (any number of spatial dimensions): one kernel-sized dot product per output element."""
    return y[0].numel() * (conv.in_channels // conv.groups) * math.prod(conv.kernel_size)


def dynamic_conv_macs(layer: DynamicConvNd, x: Tensor, y: Tensor) -> dict[str, int]:
    """MACs of one ODConv/CondConv/DyConv layer (1-D, 2-D or 3-D) for one sample, split into the conv itself and
    the dynamic parts."""
    c, o = x.shape[1], y.shape[1]
    kernel_size = o * (c // layer.groups) * math.prod(layer.kernel_size)  # weights of one aggregated kernel
    att = layer.attention
    aggregation = 0
    if layer.kernel_num > 1:
        aggregation += layer.kernel_num * kernel_size
    if getattr(att, "spatial_fc", None) is not None:
        aggregation += kernel_size
    products = 0
    if getattr(att, "channel_fc", None) is not None:
        products += c * _positions(x)
    if getattr(att, "filter_fc", None) is not None:
        products += o * _positions(y)
    return {
        "conv": kernel_size * _positions(y),
        "attention": c * _positions(x) + _attention_layer_macs(att),
        "aggregation": aggregation,
        "products": products,
    }


def kw_conv_macs(layer: KWConvNd, x: Tensor, y: Tensor) -> dict[str, int]:
    """MACs of one KernelWarehouse conv for one sample: the conv, the attention (pool and its linear layers; the
    non-local basis map `fc3` runs once per mixture) and the kernel assembly, where every kernel weight is a mix of
    the warehouse's n cells (n multiply-adds)."""
    kernel_size = math.prod(layer.weight_shape)
    att = layer.attention
    linear = _linear_map_macs(att.fc1) + _linear_map_macs(att.fc2)
    if att.num_basis:
        linear += att.num_mixtures * _linear_map_macs(att.fc3)
    return {
        "conv": kernel_size * _positions(y),
        "attention": x[0].numel() + linear,
        "aggregation": att.num_cells * kernel_size,
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


def fdconv_macs(layer: FDConv2d, x: Tensor, y: Tensor) -> dict[str, int]:
    """MACs of one FDConv layer for one sample (odconv/fdconv.py), split as `count_macs` reports; a layer below
    FDConv's gate is a static conv."""
    if not layer.is_dynamic:
        return {"conv": static_conv_macs(layer, y)}
    c, h, w = x.shape[1:]
    o, ho, wo = y.shape[1:]
    k = layer.kernel_size[0]
    weights = o * c * k * k
    rows, cols = o * k, c * k
    g = layer.KSM_Global
    attention = c * h * w + _attention_layer_macs(g)  # pool, fc and the heads on the pooled vector
    if layer.use_ksm_local:  # the local 1-D conv slides along the C_in channels of the pooled vector
        attention += c * layer.KSM_Local.conv.weight.numel()
    aggregation = fft_macs(rows, cols)  # the inverse FFT of the gated spectrum to the kernel
    if "dft_weight" not in layer._parameters:  # convert_param=False: the kernel is transformed on every call
        aggregation += fft_macs(rows, cols)
    if getattr(g, "kernel_fc", None) is not None:  # a real band gate on each real and imaginary part
        aggregation += layer.param_ratio * rows * (cols // 2 + 1) * 2
    gates_on_kernel = [getattr(g, "spatial_fc", None) is not None, layer.use_ksm_local]
    products = 0
    on_kernel = weights < (c + o) * h * w  # the released rule, as in FDConv2d.forward
    channel, filt = getattr(g, "channel_fc", None) is not None, getattr(g, "filter_fc", None) is not None
    if on_kernel:
        gates_on_kernel += [channel, filt]
    else:
        products = channel * c * h * w + filt * o * ho * wo
    aggregation += sum(gates_on_kernel) * weights
    frequency = 0
    fbm = getattr(layer, "FBM", None)
    if fbm is not None:
        bands = len(fbm.k_list)
        frequency = c * fft_macs(h, w) + bands * c * fft_macs(h, w)  # the input's FFT; each band's inverse
        for conv in fbm.freq_weight_conv_list:  # each band's gate (C_in -> 1, 3x3, same size) and its product
            frequency += static_conv_macs(conv, x[:, :1]) + c * h * w
    return {"conv": weights * ho * wo, "attention": attention, "aggregation": aggregation, "products": products,
            "frequency": frequency}


def _unit_macs(module: nn.Module, x: Tensor, y: Tensor) -> dict[str, int]:
    if isinstance(module, FDConv2d):
        return fdconv_macs(module, x, y)
    if isinstance(module, DynamicConvNd):
        return dynamic_conv_macs(module, x, y)
    if isinstance(module, KWConvNd):
        return kw_conv_macs(module, x, y)
    return dcd_macs(module, x, y)


UNITS = (DynamicConvNd, KWConvNd, FDConv2d, *DCD_LAYERS)  # counted whole, by the rules above


def _output_size(n: int, k: int, s: int, p, d: int) -> int:
    if p == "same":
        return n
    p = 0 if p == "valid" else p
    return (n + 2 * p - d * (k - 1) - 1) // s + 1


def unit_output(module: nn.Module, x: Tensor) -> Tensor:
    """An empty tensor of the shape `module` (a unit of UNITS) gives for input `x`: its conv geometry's output, or a
    DCD classifier's (B, out_features)."""
    if isinstance(module, DCDLinear):
        return x.new_empty(x.shape[0], module.out_features)
    dims = x.dim() - 2
    padding = module.padding if isinstance(module.padding, str) else tuple(module.padding)
    padding = (padding,) * dims if isinstance(padding, str) else padding
    spatial = [_output_size(*a) for a in zip(x.shape[2:], module.kernel_size, module.stride, padding,
                                             module.dilation)]
    return x.new_empty(x.shape[0], module.out_channels, *spatial)


class _SkipInit(TorchFunctionMode):
    """Leaves tensors as they are instead of filling them: initialisation on the meta device has no values to
    write, and torch runs its meta random fills through Python (tens of ms each, seconds per network)."""

    # nn.init's own functions too: a mode does not see the calls made inside a function it passed on.
    FILLS = frozenset({Tensor.normal_, Tensor.uniform_, Tensor.fill_, Tensor.zero_, Tensor.copy_, Tensor.erfinv_,
                       Tensor.exponential_, Tensor.bernoulli_, Tensor.random_,
                       *(getattr(nn.init, n) for n in dir(nn.init) if n.endswith("_") and not n.startswith("_"))})

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in self.FILLS:
            tensor = args[0] if args else kwargs.get("tensor", kwargs.get("self"))
            if isinstance(tensor, Tensor) and tensor.is_meta:
                return tensor
        return func(*args, **kwargs)


@contextlib.contextmanager
def on_meta() -> Iterator[None]:
    """Build models on the meta device, skipping the fills of their initialisation: for counting only."""
    with torch.device("meta"), _SkipInit():
        yield


def build_on_meta(builder: Callable[..., nn.Module], *args, **kwargs) -> nn.Module:
    """`builder(*args, **kwargs)` on the meta device (no memory, no initialisation): shapes only, for counting."""
    with on_meta():
        return builder(*args, **kwargs)


def count_macs(model: nn.Module, input_size: tuple[int, ...] = (3, 224, 224)) -> dict[str, int]:
    """MACs for one sample of shape `input_size` ((C, L), (C, H, W) or (C, D, H, W)), by kind: 'conv' (static
    convs + the dynamic convs' main convs), 'linear', and the dynamic convs' 'attention', 'aggregation',
    'products', 'low_rank' (DCD) and 'frequency' (FDConv); 'total' is their sum."""
    totals = dict.fromkeys(KINDS, 0)
    inside = {id(m) for d in model.modules() if isinstance(d, UNITS) for m in d.modules() if m is not d}

    def hook(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
        if isinstance(module, UNITS):
            for kind, v in _unit_macs(module, inputs[0], output).items():
                totals[kind] += v
        elif isinstance(module, STATIC_CONVS):
            totals["conv"] += static_conv_macs(module, output)
        elif isinstance(module, nn.Linear):  # once per row: a classifier once, a token-wise layer per token
            totals["linear"] += output[0].numel() // module.out_features * module.in_features * module.out_features

    counted = [m for m in model.modules() if id(m) not in inside and isinstance(m, (*UNITS, *STATIC_CONVS, nn.Linear))]
    handles = [m.register_forward_hook(hook) for m in counted]
    units = [m for m in counted if isinstance(m, UNITS) and "forward" not in m.__dict__]
    for m in units:  # not run: the count needs the output's shape only
        m.forward = functools.partial(unit_output, m)
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
        for m in units:
            del m.forward
    totals["total"] = sum(totals.values())
    return totals
