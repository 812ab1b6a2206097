"""CPU seconds per training step of the proxy study's ResNet18s (static, ODConv 1x/4x, DyConv 4x, CondConv 8x; the
later members with --models).

    python scripts/bench_study_models.py [--threads 1] [--batch 64] [--size 32] [--repeats 3] [--models static kw1x]
        [--before]

--before adds, for each KernelWarehouse and FDConv model, the same model run as it ran before 2026-12-03: every
kernel tap built and convolved, also those that only ever see the padding on maps smaller than the kernel, and (KW)
every call as the grouped conv over the batch (no per-tap batched GEMM).

One step = forward, cross-entropy, backward and an SGD step on random data, on the process's CPU time (repeatable on
a loaded machine), the minimum over --repeats after a warm-up step. Times the rules' dispatch of this checkout; to
compare two commits, run it in each.
"""
from __future__ import annotations

import argparse
import contextlib
import time
from unittest import mock

import timm
import torch

import models  # noqa: F401  registers the zoo
from odconv import dispatch, fdconv, kernelwarehouse

MODELS = {"static": ("static_resnet18", {}), "od1x": ("od_resnet18", dict(kernel_num=1)),
          "od4x": ("od_resnet18", dict(kernel_num=4)), "dyconv4x": ("dyconv_resnet18", {}),
          "condconv8x": ("condconv_resnet18", {}), "kw1x": ("kw_resnet18", {}), "kw4x": ("kw_resnet18", dict(kw_ratio=4)),
          "dcd": ("dcd_resnet18", {}), "fdconv": ("fd_resnet18", {})}
DEFAULT = ("static", "od1x", "od4x", "dyconv4x", "condconv8x")


def _step_seconds(model, x, y, repeats: int) -> float:
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    times = []
    for _ in range(repeats + 1):
        start = time.process_time()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        opt.zero_grad()
        times.append(time.process_time() - start)
    return min(times[1:])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--models", nargs="+", default=list(DEFAULT), choices=list(MODELS))
    p.add_argument("--before", action="store_true", help="also time KW and FDConv models as they ran before the "
                   "padding-only taps were cut (and, KW, small maps went to the batched GEMM)")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    x = torch.randn(a.batch, 3, a.size, a.size)
    y = torch.randint(0, 10, (a.batch,))
    print(f"batch {a.batch}, {a.size}px, {a.threads} thread(s): CPU seconds per training step")
    variants = [(label, False) for label in a.models]
    if a.before:
        variants += [(label, True) for label in a.models if label.startswith(("kw", "fdconv"))]
    for label, before in variants:
        name, kwargs = MODELS[label]
        model = timm.create_model(name, num_classes=10, **kwargs)
        with contextlib.ExitStack() as stack:
            if before:  # every tap assembled, and the grouped conv for every call
                stack.enter_context(mock.patch.object(kernelwarehouse, "data_tap_box", lambda *args: None))
                stack.enter_context(mock.patch.object(fdconv, "data_tap_box", lambda *args: None))
                stack.enter_context(mock.patch.object(dispatch, "PER_SAMPLE_BMM_RATIO", float("inf")))
            step = _step_seconds(model, x, y, a.repeats)
        if not step > 0:  # a clock that did not tick: no row rather than a 0.00 that reads as a measurement
            raise SystemExit(f"{label}: a training step measured {step} CPU seconds; the timer is broken")
        print(f"{label + (' (before)' if before else ''):>20s} {step:6.2f}", flush=True)


if __name__ == "__main__":
    main()
