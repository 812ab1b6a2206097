"""Probes of the machine that explain the choices in odconv/ (BENCHMARKS.md, "What changed in this round", and
"KernelWarehouse on small maps"):

- gemm: one GEMM of a 3x3 ODConv layer at 14x14 (batch 16, 256 channels) run four ways: the 3x3 conv itself,
  the (3136 x 256) x (256 x 2304) product of the `taps` formulation as torch.mm (MKL) and as a 1x1 conv (oneDNN),
  NCHW and channels_last. GMAC/s of each.
- fresh: writing a tensor freshly allocated each time against writing one reused buffer of the same size, for
  the sizes of ODConv's temporaries; the ratio is the cost of page faults on this machine.
- per_sample: a 3x3 conv with a ready per-sample kernel (KernelWarehouse), forward + backward, at ResNet18's widths
  and small maps: the grouped conv over the batch (with the transposition from the assembly's tap-major order
  that it needs) against the batched GEMM per sample and tap; process CPU time (robust on a shared machine). The
  dispatch's PER_SAMPLE_BMM_RATIO comes from it.

    python scripts/bench_cpu_probes.py --threads 2
    python scripts/bench_cpu_probes.py --threads 1 --probes per_sample [--batch 64]
"""
from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F


def best_ms(fn, repeats: int = 10, clock=time.perf_counter) -> float:
    fn()
    fn()
    times = []
    for _ in range(repeats):
        t0 = clock()
        fn()
        times.append(clock() - t0)
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


def probe_per_sample(batch: int) -> None:
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from odconv.formulations.bmm import conv_per_sample_taps
    from odconv.formulations.grouped import conv_per_sample

    print(f"3x3 conv with a per-sample kernel, batch {batch}, forward + backward, CPU ms "
          "(grouped conv with the transposition | bmm per tap | kernel-to-maps ratio out_channels x 9 / pixels)")
    for c, hw in ((64, 16), (64, 8), (128, 8), (128, 4), (256, 4), (256, 2), (512, 1)):
        x = torch.randn(batch, c, hw, hw, requires_grad=True)
        tap_major = torch.randn(batch, 9, c, c, requires_grad=True)

        def grouped():
            kernels = tap_major.permute(0, 2, 3, 1).reshape(batch, c, c, 3, 3)
            conv_per_sample(x, kernels, (1, 1), (1, 1), (1, 1), 1).sum().backward()

        def per_tap():
            conv_per_sample_taps(x, tap_major, (3, 3), (1, 1), (1, 1), (1, 1)).sum().backward()

        g, t = best_ms(grouped, 2, time.process_time), best_ms(per_tap, 2, time.process_time)
        print(f"  {c:4d} ch {hw:2d}x{hw:<2d} grouped {g:8.1f}  bmm {t:8.1f}  ratio {c * 9 / (hw * hw):7.2f}"
              f"  {'bmm' if t < g else 'grouped'} faster")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: torch's default)")
    p.add_argument("--probes", nargs="+", default=["gemm", "fresh"], choices=["gemm", "fresh", "per_sample"])
    p.add_argument("--batch", type=int, default=64, help="per_sample: the batch")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}")
    for name in args.probes:
        {"gemm": probe_gemm, "fresh": probe_fresh, "per_sample": lambda: probe_per_sample(args.batch)}[name]()


if __name__ == "__main__":
    main()
