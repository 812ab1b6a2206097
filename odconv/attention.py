"""The attention branch of ODConv: four attentions over one kernel's four dimensions (Li et al., ICLR 2022)."""
from __future__ import annotations

import math
from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class Attentions(NamedTuple):
    """Per-sample attentions; a head that the layer does not have is None (its attention is 1)."""

    channel: Optional[Tensor]  # (B, C_in), sigmoid; None where the layer has no channel attention
    filter: Optional[Tensor]  # (B, C_out), sigmoid; None for depthwise convs
    spatial: Optional[Tensor]  # (B, *kernel_size), sigmoid per tap or softmax over taps; None for 1x1 kernels
    kernel: Optional[Tensor]  # (B, K) mixing weights of the K kernels (ODConv, DyConv: softmax; CondConv: sigmoid)


class _GlobalAvgPool(torch.autograd.Function):
    """Spatial mean (B, C, *spatial) -> (B, C) whose backward returns the broadcast gradient as a stride-0 view.

    Autograd's own backward of `mean` writes a (B, C, H, W) tensor of grad / (H*W) before adding it to the input's
    gradient from the convolution: one extra pass over every ODConv layer's input per step (17 ms of a 1.0 s
    od_mobilenetv2_100 step for its first 112x112 layer alone). The view is added in that same addition.
    """

    @staticmethod
    def forward(ctx, x):
        ctx.shape = x.shape
        return x.mean(tuple(range(2, x.dim())))

    @staticmethod
    def backward(ctx, grad):
        shape = ctx.shape
        n = math.prod(shape[2:])
        return (grad / n).view(*shape[:2], *([1] * (len(shape) - 2))).expand(shape)


def global_avg_pool(x: Tensor) -> Tensor:
    """(B, C, *spatial) -> (B, C) spatial mean, with a backward pass that writes no input-sized tensor."""
    return _GlobalAvgPool.apply(x)


ATTENTIONS = ("spatial", "channel", "filter", "kernel")
SPATIAL_ACTS = ("sigmoid", "softmax")
ATTENTION_NORMS = ("batch", "layer", "none")


def check_attention_args(attentions, kernel_num: int, spatial_act: str, attention_norm: str) -> tuple[str, ...]:
    """Validate the ablation switches of ODConv's attention; returns `attentions` as a tuple in canonical order."""
    if isinstance(attentions, str):
        raise ValueError(f"attentions must be a list of names from {ATTENTIONS}, got the string {attentions!r}")
    unknown = [a for a in attentions if a not in ATTENTIONS]
    if unknown:
        raise ValueError(f"Unknown attention(s) {unknown} in attentions, should be any of {ATTENTIONS}")
    if kernel_num > 1 and "kernel" not in attentions:
        raise ValueError(f"kernel_num={kernel_num} needs the kernel attention: add 'kernel' to attentions "
                         "or set kernel_num=1")
    if spatial_act not in SPATIAL_ACTS:
        raise ValueError(f"Invalid spatial_act {spatial_act!r}, should be one of {SPATIAL_ACTS}")
    if attention_norm not in ATTENTION_NORMS:
        raise ValueError(f"Invalid attention_norm {attention_norm!r}, should be one of {ATTENTION_NORMS}")
    return tuple(a for a in ATTENTIONS if a in attentions)


def _describe_layer(attention: nn.Module) -> str:
    """The ODConv layer that owns `attention`, for an error message: its qualified name in the outermost module
    whose forward is on the call stack, else its one-line repr (the layer was called on its own)."""
    import inspect

    owners = []  # modules on the call stack that contain `attention`, innermost first
    frame = inspect.currentframe()
    while frame is not None:
        owner = frame.f_locals.get("self")
        if isinstance(owner, nn.Module) and owner is not attention and owner not in owners:
            if any(m is attention for m in owner.modules()):
                owners.append(owner)
        frame = frame.f_back
    conv = next((m for m in owners if getattr(m, "attention", None) is attention), None)
    layer = conv if conv is not None else attention
    if owners and owners[-1] is not layer:
        name = next(n for n, m in owners[-1].named_modules() if m is layer)
        return f"ODConv layer {name!r}"
    return f"{type(layer).__name__}({layer.extra_repr()})"


def is_inference_call(module: nn.Module) -> bool:
    """Whether `module` runs a pure inference call: eval mode, no autograd (no gradient can be owed to weights
    folded ahead of time) and eager (a compiler folds constants itself, and a cache on the module would be
    captured as one)."""
    return not module.training and not torch.is_grad_enabled() and not torch.compiler.is_compiling()


_CONVS = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
_BATCH_NORMS = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}


class ODAttention(nn.Module):
    """Squeeze (GAP -> 1x1 conv -> norm -> ReLU), then one 1x1-conv head per attended dimension.

    Works in 1, 2 or 3 spatial dimensions (the length of `kernel_size`): its 1x1 convs and BatchNorm are then
    Conv1d/2d/3d and BatchNorm1d/2d/3d, and the spatial head has one output per kernel tap (prod(kernel_size)).

    Module and parameter names follow the released code (`fc`, `bn`, `channel_fc`, `filter_fc`,
    `spatial_fc`, `kernel_fc`) so released checkpoints load unchanged. Ablation switches (the released behaviour
    is the default): `attentions`, the subset of heads built (a missing one is an attention of 1; depthwise convs
    never have a filter head and 1x1 kernels never a spatial one, as released); `spatial_act`, a sigmoid per tap
    or a softmax over the kh*kw taps; `attention_norm`, the squeeze's BatchNorm (`bn`), a batch-independent
    GroupNorm(1, hidden) (`norm`: layer norm over the hidden units of each sample) or none, in which case the
    squeeze fc gets a bias, as an SE block's has. With no head at all there is no squeeze either.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: tuple[int, ...],
        groups: int = 1,
        reduction: float = 0.0625,
        kernel_num: int = 4,
        min_channel: int = 16,
        attentions=ATTENTIONS,
        spatial_act: str = "sigmoid",
        attention_norm: str = "batch",
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        factory_kwargs = {"device": device, "dtype": dtype}
        attentions = check_attention_args(attentions, kernel_num, spatial_act, attention_norm)
        hidden = max(int(in_channels * reduction), min_channel)
        self.kernel_size = kernel_size
        self.kernel_num = kernel_num
        self.spatial_act = spatial_act
        self.attention_norm = attention_norm
        # A buffer, not a Python float: changing it every iteration must not retrigger torch.compile.
        # Not persistent, so state dicts keep the released keys.
        self.register_buffer("temperature", torch.tensor(1.0, **factory_kwargs), persistent=False)

        is_depthwise = in_channels == groups and in_channels == out_channels
        taps = math.prod(kernel_size)
        conv = _CONVS[len(kernel_size)]
        has = {
            "channel": "channel" in attentions,
            "filter": "filter" in attentions and not is_depthwise,
            "spatial": "spatial" in attentions and taps > 1,
            "kernel": "kernel" in attentions and kernel_num > 1,
        }
        squeeze = any(has.values())
        # Without a norm the squeeze fc gets the bias a norm would otherwise provide (as an SE block's fc has).
        fc_bias = attention_norm == "none"
        batch_norm = _BATCH_NORMS[len(kernel_size)]
        self.fc = conv(in_channels, hidden, 1, bias=fc_bias, **factory_kwargs) if squeeze else None
        self.bn = batch_norm(hidden, **factory_kwargs) if squeeze and attention_norm == "batch" else None
        self.norm = nn.GroupNorm(1, hidden, **factory_kwargs) if squeeze and attention_norm == "layer" else None
        self.channel_fc = conv(hidden, in_channels, 1, **factory_kwargs) if has["channel"] else None
        self.filter_fc = conv(hidden, out_channels, 1, **factory_kwargs) if has["filter"] else None
        self.spatial_fc = conv(hidden, taps, 1, **factory_kwargs) if has["spatial"] else None
        self.kernel_fc = conv(hidden, kernel_num, 1, **factory_kwargs) if has["kernel"] else None
        # (key, folded weights) of the inference path; see _inference_weights.
        self._folded: Optional[tuple] = None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # As released: He init (fan_out, relu) for every 1x1 conv, zero biases, identity BN, so every
        # sigmoid starts at 0.5 and the softmax at 1/K.
        for m in self.modules():
            if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.GroupNorm)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def update_temperature(self, temperature: float) -> None:
        self.temperature.fill_(float(temperature))

    def _heads(self) -> list[nn.Module]:
        return [h for h in (self.channel_fc, self.filter_fc, self.spatial_fc, self.kernel_fc) if h is not None]

    def _squeeze(self, x: Tensor) -> Tensor:
        """GAP -> fc -> norm -> ReLU: (B, C_in, *spatial) -> (B, hidden)."""
        b = x.shape[0]
        s = F.linear(global_avg_pool(x), self.fc.weight.flatten(1), self.fc.bias)  # GAP, then the squeeze fc
        if self.bn is not None:
            if self.bn.training and b == 1:  # the BN's own mode: mmdet's norm_eval puts only the BNs in eval mode
                # torch's own message ("Expected more than 1 value per channel") names neither the layer nor a fix.
                raise ValueError(
                    f"{_describe_layer(self)}: a training-mode batch of one sample cannot go through the attention's "
                    "BatchNorm (attention_norm='batch', as released); use attention_norm='layer' or 'none', call "
                    "model.eval(), or train with batches of more than one sample"
                )
            s = self.bn(s.view(b, -1, *([1] * len(self.kernel_size))))  # the BatchNorm of the layer's dimension
        elif self.norm is not None:
            s = self.norm(s.view(b, -1, 1, 1))
        return F.relu(s).view(b, -1)

    def forward(self, x: Tensor) -> Attentions:
        b = x.shape[0]
        heads = self._heads()
        if not heads:
            return Attentions(None, None, None, None)
        folded = self._inference_weights() if is_inference_call(self) else None
        if folded is not None:
            # Inference: the eval BatchNorm is in the squeeze weights and 1/T in the heads', computed once; the
            # GAP's division by H*W rides on the GEMM (alpha). Five small ops where training mode has a dozen.
            w1, b1, w2, b2 = folded
            s = torch.addmm(b1, x.sum(tuple(range(2, x.dim()))), w1, alpha=1.0 / math.prod(x.shape[2:]))
            if self.norm is not None:
                s = self.norm(s.view(b, -1, 1, 1)).view(b, -1)
            logits = torch.addmm(b2, s.relu_(), w2)
        else:
            s = self._squeeze(x)
            # The heads as one GEMM over their concatenated weights, one division by the temperature and one
            # sigmoid over channel, filter and spatial logits together: a layer's attention branch is a dozen
            # small ops instead of twenty, and in eager mode each op costs more than its arithmetic (batch 1,
            # small maps). Parameters and results are those of the released per-head 1x1 convs.
            weight = torch.cat([h.weight.flatten(1) for h in heads])
            bias = torch.cat([h.bias for h in heads])
            logits = F.linear(s, weight, bias) / self.temperature
        return self._activate(x, logits)

    def _activate(self, x: Tensor, logits: Tensor) -> Attentions:
        """The heads' activations over their slices of the concatenated logits (already divided by T)."""
        b = x.shape[0]
        c = self.channel_fc.out_channels if self.channel_fc is not None else 0
        o = self.filter_fc.out_channels if self.filter_fc is not None else 0
        t = math.prod(self.kernel_size) if self.spatial_fc is not None else 0
        sigmoid_end = c + o + (t if self.spatial_act == "sigmoid" else 0)
        gates = torch.sigmoid(logits[:, :sigmoid_end])
        channel = gates[:, :c] if self.channel_fc is not None else None  # None: attention 1, no multiply
        filt = gates[:, c: c + o] if self.filter_fc is not None else None
        spatial = None
        if self.spatial_fc is not None:
            taps = gates[:, c + o: c + o + t] if self.spatial_act == "sigmoid" else torch.softmax(
                logits[:, c + o: c + o + t], dim=1)
            spatial = taps.reshape(b, *self.kernel_size)
        kernel = torch.softmax(logits[:, c + o + t:], dim=1) if self.kernel_fc is not None else None
        return Attentions(channel, filt, spatial, kernel)

    def _inference_weights(self) -> Optional[tuple[Tensor, Tensor, Tensor, Tensor]]:
        """(squeeze weight, squeeze bias, heads' weight, heads' bias) computing the eval-mode attention logits
        in two GEMMs: ``logits = relu(GAP(x) @ w1 + b1) @ w2 + b2`` (the layer norm, if any, still in between;
        the weights are stored transposed, (in, out), as the GEMMs take them).

        Cached until a parameter, a BatchNorm statistic or the temperature changes (each tensor's storage and
        version counter are the key, so an optimiser step, `load_state_dict`, an EMA update or `.to()` all
        invalidate it) and on `train()`. None where the BatchNorm keeps no running statistics.
        """
        if self.bn is not None and self.bn.running_var is None:
            return None
        key = self._source_key()
        if key is not None and self._folded is not None and self._folded[0] == key:
            return self._folded[1]
        heads = self._heads()
        w1 = self.fc.weight.flatten(1)
        b1 = self.fc.bias if self.fc.bias is not None else w1.new_zeros(w1.shape[0])
        if self.bn is not None:  # eval BatchNorm: an affine map of the squeeze's output, folded into it
            scale = self.bn.weight * torch.rsqrt(self.bn.running_var + self.bn.eps)
            w1 = w1 * scale[:, None]
            b1 = (b1 - self.bn.running_mean) * scale + self.bn.bias
        w2 = torch.cat([h.weight.flatten(1) for h in heads]) / self.temperature
        b2 = torch.cat([h.bias for h in heads]) / self.temperature
        folded = (w1.t(), b1, w2.t(), b2)
        self._folded = (key, folded) if key is not None else None
        return folded

    def _source_key(self) -> Optional[tuple]:
        """(storage, version) of every parameter and buffer of the branch: equal keys, equal folded weights.

        Read through the module dicts, not attribute access (this runs at every inference call and nn.Module's
        attribute fallback costs a microsecond a step). None for inference tensors (a model built under
        torch.inference_mode), which have no version counter: no caching then.
        """
        tensors = [self._buffers["temperature"]]
        for m in self._modules.values():
            if m is not None:
                tensors += [*m._parameters.values(), *m._buffers.values()]
        try:
            return tuple((t.data_ptr(), t._version) for t in tensors if t is not None)
        except RuntimeError:
            return None

    def train(self, mode: bool = True) -> "ODAttention":
        self._folded = None
        return super().train(mode)

    def __getstate__(self):  # copies and pickles never carry the cache (it may hold inference tensors)
        state = super().__getstate__() if hasattr(super(), "__getstate__") else self.__dict__.copy()
        return {**state, "_folded": None}

    def extra_repr(self) -> str:
        return f"hidden={self.fc.out_channels}" if self.fc is not None else "no attention"
