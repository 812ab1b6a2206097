"""Forward+backward time of one kernel-attention-only layer (DyConv2d, CondConv2d) under every formulation that
can compute it, beside the static conv, in one process: the probe behind BENCHMARKS.md's "CondConv and DyConv".

    python scripts/bench_kernel_only.py [--layer dyconv|condconv] [--shapes 64x64x8 64x256x2 64x512x1] [--threads 1]

A shape is BATCHxCHANNELSxSIZE (a 3x3, stride-1, same-padded layer with as many output as input channels).
Times are the calling thread's CPU time (repeatable on a loaded machine), the minimum of --repeats after a warm-up.
"""
from __future__ import annotations

import argparse
import time

import torch

import odconv
from odconv.formulations import FORMULATIONS, REGISTRY


def _time(fn, repeats: int) -> float:
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        start = time.thread_time()
        fn()
        best = min(best, time.thread_time() - start)
    return best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--layer", choices=["dyconv", "condconv"], default="dyconv")
    p.add_argument("--shapes", nargs="+", default=["64x64x8", "64x256x2", "64x512x1"])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=2)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    print(f"{'shape':>10s} {'static ms':>10s} " + " ".join(f"{f:>9s}" for f in FORMULATIONS) + "  rules pick")
    for spec in a.shapes:
        b, c, s = (int(v) for v in spec.split("x"))
        x = torch.randn(b, c, s, s, requires_grad=True)
        layer = odconv.create_dynamic_conv(a.layer, c, c, 3, padding=1)
        static = torch.nn.Conv2d(c, c, 3, padding=1, bias=False)
        row = [_time(lambda: static(x).sum().backward(), a.repeats)]
        shape = layer.layer_shape(x)
        for f in FORMULATIONS:
            if not REGISTRY[f].can_compute(shape):  # forcing it would time the dispatch's choice instead
                row.append(None)
                continue
            layer.formulation = f
            row.append(_time(lambda: layer(x).sum().backward(), a.repeats) / row[0])
        layer.formulation = None
        (pick,) = {r.formulation for r in odconv.explain(layer, x)}
        cells = " ".join("        —" if v is None else f"{v:8.2f}x" for v in row[1:])
        print(f"{spec:>10s} {row[0] * 1e3:10.1f} {cells}  {pick}")


if __name__ == "__main__":
    main()
