"""Eval-mode cost of the 1x ODConv models over their static twins, measured side by side in one process.

For each (model, batch) the static twin and the ODConv model run alternately (static, od, static, od, ...) under
`torch.inference_mode()`, each call timed on its own; the figure is the ratio of the two minima (on a shared
machine other processes only ever add time). Printed as one markdown table.

Clocks: `wall` (perf_counter), or `cpu`: the CPU time of this thread (`time.thread_time`), which with one intra-op
thread is all the work of a call and is not inflated by waiting for a core on a loaded machine (the default for
`--threads 1`; with more threads the pool's work is on other threads, so wall time is used).

    python scripts/bench_inference.py --models od_resnet50 od_mobilenetv2_100 --batches 1 16 --repeats 30
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import torch

sys.path.append(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # after PYTHONPATH
import timm  # noqa: E402

import models  # noqa: E402,F401  (registers the zoo with timm)


def interleaved_minima(fns: dict, repeats: int, warmup: int = 2, clock=time.perf_counter) -> dict[str, float]:
    """Seconds per call of each function: the minimum over `repeats` interleaved calls, after `warmup` rounds."""
    times = {n: float("inf") for n in fns}
    for r in range(warmup + repeats):
        for n, fn in fns.items():
            t0 = clock()
            fn()
            dt = clock() - t0
            if r >= warmup:
                times[n] = min(times[n], dt)
    return times


def compare(name: str, batch: int, res: int, repeats: int, clock=time.perf_counter,
            kernel_num: int = 1) -> tuple[float, float]:
    """(static seconds, od seconds) per eval call of `name` and its static twin at `batch` x 3 x res x res."""
    torch.manual_seed(0)
    static = timm.create_model(name.replace("od_", "static_")).eval()
    od = timm.create_model(name, kernel_num=kernel_num).eval()
    x = torch.randn(batch, 3, res, res)

    def run(model):
        def call():
            with torch.inference_mode():
                return model(x)
        return call

    t = interleaved_minima({"static": run(static), "od": run(od)}, repeats, clock=clock)
    return t["static"], t["od"]


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["od_resnet50", "od_mobilenetv2_100"])
    p.add_argument("--batches", nargs="+", type=int, default=[1, 16])
    p.add_argument("--res", type=int, default=224)
    p.add_argument("--repeats", type=int, default=30, help="interleaved timed calls per model (minimum taken)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--clock", choices=["wall", "cpu"], default=None, help="default: cpu for 1 thread, else wall")
    args = p.parse_args(argv)
    clock_name = args.clock or ("cpu" if args.threads == 1 else "wall")
    if clock_name == "cpu" and args.threads != 1:
        p.error("--clock cpu measures this thread only: use it with --threads 1")
    clock = time.thread_time if clock_name == "cpu" else time.perf_counter
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} thread(s), {clock_name} clock, {args.res}px, eval under "
          f"inference_mode, min of {args.repeats} interleaved calls; load average {os.getloadavg()[0]:.1f}")
    print("| model | batch | static ms | od ms | od / static |\n|---|---:|---:|---:|---:|")
    for name in args.models:
        for b in args.batches:
            s, o = compare(name, b, args.res, args.repeats, clock)
            print(f"| {name} 1x | {b} | {s * 1e3:.1f} | {o * 1e3:.1f} | {o / s:.2f} |", flush=True)


if __name__ == "__main__":
    main()
