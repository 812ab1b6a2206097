"""The headline speed and memory table: each ODConv zoo model over torchvision's own model and the zoo's static
twin, as a user runs it (torch's default thread count) and on one thread.

Rows are the ones users asked about: training steps of od_resnet50 1x/4x and od_mobilenetv2_100 1x/4x (batch 16,
224px) and od_resnet18 1x in the demo's regime (batch 64, 32px); eval of the 1x models at batch 1 and 16. Each
row runs in its own process (the heap one model leaves behind moves the next one's timings by up to 2x), where
static, torchvision and ours are timed interleaved (static, torchvision, ours, static, ...) after a warm-up and
each is reported by its minimum (on a shared machine other processes only ever add time). Peak training memory
is the growth of the peak resident set of a fresh process that builds the model and takes three SGD steps with
momentum, one process per model: weights, gradients, optimizer state, activations and every transient buffer.
The load average is printed before and after, so a reader can tell an idle machine's figures from a busy one's.

    python scripts/bench_headline.py                       # every row, default threads and 1 thread
    python scripts/bench_headline.py --rows od_resnet18    # rows whose model contains the text
    python scripts/bench_headline.py --quick               # tiny inputs and one repeat: checks that it runs
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple, Optional

REPO = Path(__file__).resolve().parent.parent


class Row(NamedTuple):
    model: str
    kernel_num: int
    batch: int
    res: int
    train: bool
    target: float  # ours over torchvision, the goal users were given


ROWS = [
    Row("od_resnet50", 1, 16, 224, True, 1.30),
    Row("od_resnet50", 4, 16, 224, True, 1.80),
    Row("od_mobilenetv2_100", 1, 16, 224, True, 1.25),
    Row("od_mobilenetv2_100", 4, 16, 224, True, 1.50),
    Row("od_resnet18", 1, 64, 32, True, 1.50),
    Row("od_resnet50", 1, 1, 224, False, 1.20),
    Row("od_resnet50", 1, 16, 224, False, 1.20),
    Row("od_mobilenetv2_100", 1, 1, 224, False, 1.20),
    Row("od_mobilenetv2_100", 1, 16, 224, False, 1.20),
]
MEMORY_TARGET_1X = 1.2  # peak training memory of the 1x models over torchvision's
VARIANTS = ("static", "torchvision", "ours")


def quick(row: Row) -> Row:
    return row._replace(batch=min(row.batch, 2), res=32)


def _threads(setting: str) -> Optional[int]:
    return None if setting == "default" else int(setting)


def _child(args: list[str], threads: Optional[int]) -> dict:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    proc = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"error: {' '.join(args)} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def time_row(row: Row, threads: Optional[int], repeats: int) -> dict:
    """In this process: ms per step of static, torchvision and ours, interleaved."""
    import torch
    sys.path.insert(0, str(REPO / "scripts"))
    from bench_measure import compare, model_variants
    if threads is not None:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    variants = model_variants(row.model, row.kernel_num, row.batch, row.res, torch.device("cpu"), row.train,
                              released=False, torchvision=True)
    times, _ = compare(variants, torch.device("cpu"), repeats)
    return {"threads": torch.get_num_threads(), **{n: times[n] * 1e3 for n in VARIANTS}}


def _rss_bytes() -> int:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_training_memory(row: Row, variant: str, threads: Optional[int]) -> dict:
    """In this (fresh) process: the peak resident set's growth over three SGD steps of one model, in bytes."""
    import timm
    import torch
    import torch.nn.functional as F
    sys.path.insert(0, str(REPO / "scripts"))
    import models  # noqa: F401  (registers the zoo)
    from bench_measure import torchvision_model
    if threads is not None:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    x = torch.randn(row.batch, 3, row.res, row.res)
    y = torch.randint(0, 10, (row.batch,))
    base = _rss_bytes()
    if variant == "torchvision":
        model = torchvision_model(row.model)
    elif variant == "static":
        model = timm.create_model(row.model.replace("od_", "static_"), num_classes=10)
    else:
        model = timm.create_model(row.model, kernel_num=row.kernel_num, num_classes=10)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    for _ in range(3):
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    return {"bytes": peak - base}


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    import torch
    return f"{cpu}, {os.cpu_count()} logical cores, torch {torch.__version__}, default threads {torch.get_num_threads()}"


def load() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--rows", nargs="*", default=[], help="only rows whose model contains one of these texts")
    p.add_argument("--threads", nargs="+", default=["default", "1"], help="thread settings: 'default' and/or N")
    p.add_argument("--repeats", type=int, default=5, help="timed repeats per variant (after one warm-up)")
    p.add_argument("--quick", action="store_true", help="32px, batch <= 2, one repeat: checks that it runs")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory processes")
    p.add_argument("--json", type=Path, help="also write every figure to this file")
    # One measurement, in a child process (internal).
    p.add_argument("--child", choices=["time", "memory"], help=argparse.SUPPRESS)
    p.add_argument("--row", type=int, help=argparse.SUPPRESS)
    p.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    rows = [quick(r) if args.quick else r for r in ROWS]
    if args.child:
        row, threads = rows[args.row], _threads(args.threads[0])
        result = time_row(row, threads, args.repeats) if args.child == "time" else \
            peak_training_memory(row, args.variant, threads)
        print(json.dumps(result))
        return 0

    repeats = 1 if args.quick else args.repeats
    picked = [i for i, r in enumerate(rows) if not args.rows or any(t in r.model for t in args.rows)]
    if not picked:
        raise SystemExit(f"error: --rows {args.rows} matches none of {sorted({r.model for r in rows})}")
    print(f"# Headline: ODConv over torchvision and the static twin\n\nmachine: {machine()}\nload average before: "
          f"{load()}\ncommand: python scripts/bench_headline.py {' '.join(argv if argv is not None else sys.argv[1:])}"
          "\nms: minimum of the interleaved repeats; ratios: ours over torchvision (target) and over the static twin; "
          "mem: peak training memory over torchvision's\n")
    results = []
    for setting in args.threads:
        threads = _threads(setting)
        print(f"## threads: {setting}\n")
        print("| model | K | batch | res | pass | torchvision ms | static ms | ours ms | ours / torchvision | target "
              "| ours / static | mem ours / torchvision |")
        print("|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|")
        for i in picked:
            r = rows[i]
            t = _child(["--child", "time", "--row", str(i), "--threads", setting, "--repeats", str(repeats)]
                       + (["--quick"] if args.quick else []), threads)
            mem = None
            if r.train and not args.no_memory:
                m = {v: _child(["--child", "memory", "--row", str(i), "--variant", v, "--threads", setting]
                               + (["--quick"] if args.quick else []), threads)["bytes"] for v in VARIANTS}
                mem = {v: b / 2**20 for v, b in m.items()}
            ratio = t["ours"] / t["torchvision"]
            mem_ratio = "" if mem is None else f"{mem['ours'] / mem['torchvision']:.2f}"
            met = "met" if ratio <= r.target else "over"
            print(f"| {r.model} | {r.kernel_num} | {r.batch} | {r.res} | {'train' if r.train else 'eval'} "
                  f"| {t['torchvision']:.1f} | {t['static']:.1f} | {t['ours']:.1f} | {ratio:.2f} "
                  f"| {r.target:.2f} ({met}) | {t['ours'] / t['static']:.2f} | {mem_ratio} |", flush=True)
            results.append({"row": r._asdict(), "threads": setting, "ms": t, "peak_mib": mem})
        print()
    print(f"load average after: {load()}\nmemory target: {MEMORY_TARGET_1X}x for the 1x models")
    if args.json:
        args.json.write_text(json.dumps({"machine": machine(), "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
