"""Two probes of the machine that explain the choices in odconv/ (BENCHMARKS.md, "What changed in this round"):

- gemm: one GEMM of a 3x3 ODConv layer at 14x14 (batch 16, 256 channels) run four ways: the 3x3 conv itself,
  the (3136 x 256) x (256 x 2304) product of the `taps` formulation as torch.mm (MKL) and as a 1x1 conv (oneDNN),
  NCHW and channels_last. GMAC/s of each.
- fresh: writing a tensor freshly allocated each time against writing one reused buffer of the same size, for
  the sizes of ODConv's temporaries; the ratio is the cost of page faults on this machine.

    python scripts/bench_cpu_probes.py --threads 2
"""
from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F


def best_ms(fn, repeats: int = 10) -> float:
    fn()
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times) * 1e3


def probe_gemm() -> None:
    b, c, hw, o = 16, 256, 14, 256
    x = torch.randn(b, c, hw, hw)
    xl = x.contiguous(memory_format=torch.channels_last)
    w3 = torch.randn(o, c, 3, 3)
    w1 = torch.randn(9 * o, c, 1, 1)
    a = torch.randn(b * hw * hw, c)
    m = torch.randn(c, 9 * o)
    macs = b * hw * hw * c * 9 * o
    print(f"GEMM of a 3x3 layer: batch {b}, {c} channels, {hw}x{hw}, {macs / 1e9:.2f} GMAC")
    for name, fn in [("conv 3x3, NCHW", lambda: F.conv2d(x, w3, None, 1, 1)),
                     ("conv 3x3, channels_last", lambda: F.conv2d(xl, w3, None, 1, 1)),
                     ("conv 1x1 to 9*O outputs, NCHW", lambda: F.conv2d(x, w1)),
                     ("conv 1x1 to 9*O outputs, channels_last", lambda: F.conv2d(xl, w1)),
                     ("torch.mm, same GEMM", lambda: a @ m)]:
        ms = best_ms(fn)
        print(f"  {name:40s} {ms:8.2f} ms {macs / ms / 1e6:7.0f} GMAC/s")


def probe_fresh() -> None:
    print("Writing N MB: a fresh tensor each time vs one reused buffer")
    for mb in (1, 9.4, 29, 51):
        n = int(mb * 2**20 / 4)
        buf = torch.empty(n)
        fresh = best_ms(lambda: torch.empty(n).fill_(1.0))
        reused = best_ms(lambda: buf.fill_(1.0))
        print(f"  {mb:5.1f} MB  fresh {fresh:7.2f} ms  reused {reused:7.2f} ms  ratio {fresh / reused:5.1f}")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: torch's default)")
    p.add_argument("--probes", nargs="+", default=["gemm", "fresh"], choices=["gemm", "fresh"])
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}")
    for name in args.probes:
        {"gemm": probe_gemm, "fresh": probe_fresh}[name]()


if __name__ == "__main__":
    main()
