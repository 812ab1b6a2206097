"""How the benchmark scripts time and weigh one step: the released ODConv forward as a baseline, interleaved
timing, the memory of a step, and the training or eval step of a zoo model beside its static twin.

Shared by `bench_odconv.py` (CPU tables of BENCHMARKS.md) and `gpu_check.py` (the CUDA report), so both measure
the same thing the same way.

Memory: on CUDA the peak of `torch.cuda.max_memory_allocated` during the step minus the memory before it. On CPU
the allocator keeps no peak, so we report the bytes autograd holds for the backward pass (every distinct storage
saved by `saved_tensors_hooks`, plus the output): that is what a training step's peak grows with; weights and
transient buffers inside one op are not in it.
"""
from __future__ import annotations

import contextlib
import math
import sys
import time
from copy import deepcopy
from pathlib import Path
from typing import Callable, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import timm  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

import models  # noqa: E402,F401  (registers the zoo with timm)
import odconv  # noqa: E402
from odconv import ODConv2d, use_formulation  # noqa: E402

# The five headline rows of the issues: (model, kernel_num, batch, resolution) on CPU.
MODEL_ROWS = [("od_resnet50", 1, 16, 224), ("od_resnet50", 4, 16, 224), ("od_mobilenetv2_100", 1, 16, 224),
              ("od_mobilenetv2_100", 4, 16, 224), ("od_resnet18", 1, 64, 32)]
DISPATCH_MODES = ("rules", "measured", "auto")
# The family's later members over the same static twins: (model, k, batch, resolution) with k KernelWarehouse's
# kw_ratio; DCD and FDConv have no kernel count (k 1: DCD's latent width and FDConv's 64 frequency groups are the
# builders'). ResNet18 at the proxy study's 32px, ResNet50 at 224px, as the ODConv rows.
FAMILY_ROWS = [("kw_resnet18", 1, 64, 32), ("kw_resnet18", 4, 64, 32), ("dcd_resnet18", 1, 64, 32),
               ("fd_resnet18", 1, 64, 32), ("kw_resnet50", 1, 16, 224), ("kw_resnet50", 4, 16, 224),
               ("dcd_resnet50", 1, 16, 224), ("fd_resnet50", 1, 16, 224)]
# The builder argument that k sets, per family (the zoo prefix before the first "_").
_K_ARGUMENT = {"od": "kernel_num", "dyconv": "kernel_num", "condconv": "num_experts", "kw": "kw_ratio"}


def static_twin(name: str) -> str:
    """The static network a zoo model is measured against: od_resnet50 -> static_resnet50."""
    return "static_" + name.split("_", 1)[1]


def build_dynamic(name: str, k: float, num_classes: int = 10) -> nn.Module:
    """The zoo model `name` with k kernels (ODConv, DyConv), experts (CondConv) or kw_ratio (KernelWarehouse);
    DCD and FDConv take no k, so only k == 1 is accepted for them."""
    key = _K_ARGUMENT.get(name.split("_", 1)[0])
    if key is None and k != 1:
        raise ValueError(f"{name} has no kernel count; give k 1, got {k}")
    return timm.create_model(name, num_classes=num_classes, **({key: k} if key else {}))


class ReleasedODConv2d(ODConv2d):
    """The released `ODConv2d._forward_impl_common` / `_forward_impl_pw1x` (OSVAI/ODConv, modules/odconv.py),
    on our parameters (same names), so it is the baseline whatever our `odconv2d_grouped` becomes."""

    def forward(self, x):
        ch, fi, sp, ke = self.attention(x)
        b, c, h, w = x.shape
        one = 1.0
        fi = one if fi is None else fi.view(b, -1, 1, 1)
        x = x * ch.view(b, -1, 1, 1)
        if self.kernel_size == (1, 1) and self.kernel_num == 1:
            out = F.conv2d(x, self.weight.squeeze(0), None, self.stride, self.padding, self.dilation, self.groups)
            return out * fi
        sp = one if sp is None else sp.view(b, 1, 1, 1, *self.kernel_size)
        ke = one if ke is None else ke.view(b, -1, 1, 1, 1, 1)
        agg = torch.sum(sp * ke * self.weight.unsqueeze(0), dim=1).view(-1, c // self.groups, *self.kernel_size)
        out = F.conv2d(x.reshape(1, -1, h, w), agg, None, self.stride, self.padding, self.dilation,
                       self.groups * b)
        return out.view(b, self.out_channels, out.shape[-2], out.shape[-1]) * fi


def released_copy(model: nn.Module) -> nn.Module:
    """A copy of `model` whose ODConv layers run `ReleasedODConv2d.forward` (same parameters and attentions)."""
    copy = deepcopy(model)
    for m in copy.modules():
        if isinstance(m, ODConv2d):
            m.__class__ = ReleasedODConv2d
    return copy


@contextlib.contextmanager
def dispatch(mode: Optional[str]):
    """ODConv's dispatch mode for the block (`odconv.set_dispatch`); None leaves the library's default."""
    if mode is None:
        yield
        return
    previous = odconv.set_dispatch(mode)
    try:
        yield
    finally:
        odconv.set_dispatch(previous)


class SavedBytes:
    """Bytes of the distinct storages autograd saves for backward inside the block (CPU memory proxy)."""

    def __init__(self):
        self.storages: dict[int, int] = {}

    def pack(self, t):
        st = t.untyped_storage()
        self.storages[st.data_ptr()] = st.nbytes()
        return t

    def __enter__(self):
        self.ctx = torch.autograd.graph.saved_tensors_hooks(self.pack, lambda t: t)
        self.ctx.__enter__()
        return self

    def __exit__(self, *exc):
        self.ctx.__exit__(*exc)

    @property
    def total(self) -> int:
        return sum(self.storages.values())


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


CLOCK = time.perf_counter  # bench_odconv --clock cpu swaps in time.process_time


def measure(step: Callable[[], torch.Tensor], device, params) -> tuple[float, int]:
    """(seconds, bytes) of one call; bytes as described in the module docstring (0 on CPU, see `saved_bytes`)."""
    for p in params:
        p.grad = None
    sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        t0 = time.perf_counter()
        step()
        sync(device)
        return time.perf_counter() - t0, torch.cuda.max_memory_allocated(device) - base
    t0 = CLOCK()
    step()
    return CLOCK() - t0, 0


def saved_bytes(forward: Callable[[], torch.Tensor]) -> int:
    with SavedBytes() as sb:
        out = forward()
    return sb.total + out.untyped_storage().nbytes()


def compare(variants: dict[str, tuple[Callable, Optional[Callable], list]], device, repeats: int, warmup: int = 1,
            first_call: Optional[dict] = None):
    """variants: name -> (timed step, forward for the memory proxy or None, params). Interleaved minima.
    `first_call`, if given, receives each variant's first warm-up time (where measured dispatch tunes)."""
    times = {n: [] for n in variants}
    mem = {n: 0 for n in variants}
    for r in range(warmup + repeats):
        for n, (step, _, params) in variants.items():
            t, m = measure(step, device, params)
            if r == 0 and first_call is not None:
                first_call[n] = t
            if r >= warmup:
                times[n].append(t)
                mem[n] = max(mem[n], m)
    if device.type == "cpu":
        for n, (_, fwd, _) in variants.items():
            mem[n] = saved_bytes(fwd) if fwd is not None else 0
    for n, v in times.items():  # every ratio printed divides by these: a zero or NaN is a broken clock or step
        if not all(math.isfinite(t) and t > 0 for t in v):
            raise RuntimeError(f"benchmark variant {n!r} measured {v} s: a step that takes no time did not run")
    # The minimum, not the median: on a shared machine the other processes only ever add time.
    return {n: min(v) for n, v in times.items()}, mem


# The torchvision model a user compares each zoo model with (same width, 10 classes).
TORCHVISION = {"od_resnet18": "resnet18", "od_resnet34": "resnet34", "od_resnet50": "resnet50",
               "od_resnet101": "resnet101", "od_mobilenetv2_100": "mobilenet_v2"}


def torchvision_model(name: str) -> nn.Module:
    """torchvision's counterpart of zoo model `name` (randomly initialised, 10 classes)."""
    import torchvision
    if name not in TORCHVISION:
        raise ValueError(f"no torchvision counterpart for {name!r}; known: {sorted(TORCHVISION)}")
    return torchvision.models.get_model(TORCHVISION[name], num_classes=10)


def model_variants(name: str, k: int, batch: int, res: int, device, train: bool, *, released: bool = True,
                   modes: tuple = (), grouped: bool = False, amp: Optional[str] = None, compile: bool = False,
                   torchvision: bool = False):
    """name -> (step, forward, params) of one zoo model and its static twin, for `compare`; `k` as in
    `build_dynamic` (the released variant only means something for ODConv models).

    Variants: "static"; "torchvision" (torchvision's own model) if `torchvision`; "ours" (the library's default
    dispatch) when `modes` is empty, else "ours:<mode>" for each dispatch mode (each on its own copy of the same
    weights); "released" (`ReleasedODConv2d` in every ODConv layer) if `released`; "grouped" (our released
    formulation forced everywhere) if `grouped`.
    The step is forward + cross-entropy (+ backward when `train`), under bf16 autocast when amp == "bf16".
    """
    static = timm.create_model(static_twin(name), num_classes=10).to(device)
    od = build_dynamic(name, k).to(device)
    nets: dict[str, tuple[nn.Module, Optional[str], Optional[str]]] = {"static": (static, None, None)}
    if torchvision:
        nets["torchvision"] = (torchvision_model(name).to(device), None, None)
    for i, mode in enumerate(modes or (None,)):
        nets[f"ours:{mode}" if mode else "ours"] = (od if i == 0 else deepcopy(od), mode, None)
    if grouped:
        nets["grouped"] = (od, None, "grouped")
    if released:
        nets["released"] = (released_copy(od), None, None)
    x = torch.randn(batch, 3, res, res, device=device)
    y = torch.randint(0, 10, (batch,), device=device)
    autocast = {"bf16": torch.bfloat16}.get(amp)

    def make(model, mode, form):
        model.train(train)
        if compile:  # inductor; the warm-up call of `compare` triggers the compilation
            model = torch.compile(model)

        def fwd():
            with (dispatch(mode), use_formulation(form) if form else contextlib.nullcontext(),
                  torch.autocast(device.type, dtype=autocast, enabled=autocast is not None)):
                return F.cross_entropy(model(x), y)

        def step():
            if not train:
                with torch.no_grad():
                    return fwd()
            loss = fwd()
            loss.backward()
            return loss
        return step, (fwd if train else None), list(model.parameters())
    return {n: make(*v) for n, v in nets.items()}
