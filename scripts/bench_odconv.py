"""Speed and memory of ODConv formulations against the static conv and the released formulation, side by side.

Every variant of one row is measured in this process, interleaved (A, B, C, A, B, C, ...), and reported as the
minimum time over repeats divided by the static conv's. Two sections:

- layers: every distinct ODConv layer shape of the zoo (found by hooks on the real models) at 224px, batch 16
  and 32px, batch 64; forward (eval, no grad) and forward+backward (train) of the static conv, the released
  code (`bench_measure.ReleasedODConv2d`, unchanged in substance), and each formulation of `odconv`.
- models: training step (forward, cross-entropy, backward) of od_resnet50 1x/4x, od_mobilenetv2_100 1x/4x
  (batch 16, 224px) and od_resnet18 1x (batch 64, 32px) over their static twins; eval at batch 1 and 16. The
  released column runs every ODConv layer of the same model through `ReleasedODConv2d.forward`; with
  `--dispatch rules measured` one column per ODConv dispatch mode replaces "ours". Then the family's later
  members (`bench_measure.FAMILY_ROWS`: KernelWarehouse 1x/4x, DCD, FDConv; ResNet18 at 32px, ResNet50 at 224px)
  over the same static twins, training step and eval (K is KernelWarehouse's kw_ratio; no released column).

Timing, memory and the released baseline are in `bench_measure.py` (shared with `gpu_check.py`).

    python scripts/bench_odconv.py --section layers --quick       # a few shapes, a minute on 2 cores
    python scripts/bench_odconv.py --section all --device cuda    # everything
    python scripts/bench_odconv.py --section layers --out benchmarks/layers.txt   # the table also into a file
    python scripts/bench_odconv.py --section models --dispatch rules measured --skip-released  # two dispatches
"""
from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import timm  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

import bench_measure  # noqa: E402
from bench_measure import (DISPATCH_MODES, FAMILY_ROWS, MODEL_ROWS, ReleasedODConv2d, compare,  # noqa: E402
                           model_variants)
from odconv import FORMULATIONS, ODConv2d, explain, use_formulation  # noqa: E402
from odconv.dispatch import LayerShape, choose  # noqa: E402
from odconv.formulations import supported  # noqa: E402

ZOO = ("od_resnet18", "od_resnet34", "od_resnet50", "od_resnet101",
       "od_mobilenetv2_050", "od_mobilenetv2_075", "od_mobilenetv2_100")
SETTINGS = {224: 16, 32: 64}  # input size -> batch
QUICK_SHAPES = 6


def zoo_shapes(res: int, batch: int, zoo=ZOO) -> list[LayerShape]:
    """Distinct ODConv layer shapes of the zoo models at K=1 and K=4, in first-seen order."""
    seen: dict[LayerShape, None] = {}
    for name in zoo:
        for k in (1, 4):
            model = timm.create_model(name, kernel_num=k, num_classes=10).eval()
            hooks = [m.register_forward_pre_hook(lambda mod, a: seen.setdefault(mod.layer_shape(a[0])._replace(
                batch=batch))) for m in model.modules() if isinstance(m, ODConv2d)]
            with torch.no_grad():
                model(torch.zeros(1, 3, res, res))
            for h in hooks:
                h.remove()
    return list(seen)


def layer_variants(shape: LayerShape, device, formulations, train: bool):
    """name -> (step, forward, params) for one layer shape: static, released, ours (auto) and each formulation."""
    kh, kw = shape.kernel_size
    pad = ((kh - 1) // 2, (kw - 1) // 2)
    x = torch.randn(shape.batch, shape.in_channels, shape.height, shape.width, device=device)
    static = nn.Conv2d(shape.in_channels, shape.out_channels, shape.kernel_size, shape.stride, pad,
                       groups=shape.groups, bias=False).to(device)
    od = ODConv2d(shape.in_channels, shape.out_channels, shape.kernel_size, shape.stride, pad,
                  groups=shape.groups, kernel_num=shape.kernel_num).to(device)
    rel = ReleasedODConv2d(shape.in_channels, shape.out_channels, shape.kernel_size, shape.stride, pad,
                           groups=shape.groups, kernel_num=shape.kernel_num).to(device)
    rel.load_state_dict(od.state_dict())
    xg = x.clone().requires_grad_(train)
    mods = {"static": static, "released": rel, "ours": od}
    forced = {f"={f}": f for f in formulations if supported(f, shape.groups, shape.has_spatial)}
    out = {}

    def make(mod, form=None):
        def fwd():
            if form is None:
                return mod(xg)
            with use_formulation(form):
                return mod(xg)

        def step():
            if not train:
                with torch.no_grad():
                    return fwd()
            y = fwd()
            y.backward(torch.ones_like(y))
            return y
        return step, (fwd if train else None), list(mod.parameters()) + [xg]

    for n, m in mods.items():
        m.train(train)
        out[n] = make(m)
    for n, f in forced.items():
        out[n] = make(od, f)
    return out


def fmt_shape(s: LayerShape) -> str:
    return (f"{s.in_channels:4d}->{s.out_channels:<4d} {s.kernel_size[0]}x{s.kernel_size[1]} s{s.stride[0]} "
            f"g{s.groups:<4d} K{s.kernel_num} {s.height:3d}px b{s.batch}")


def run_layers(args, device, header: str):
    """The layer table on stdout, and with --out also into that file (the tables BENCHMARKS.md links to)."""
    file = None
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        file = open(args.out, "w")

    def emit(line: str) -> None:
        print(line, flush=True)
        if file is not None:
            file.write(line + "\n")
            file.flush()

    cols = ["released", "ours"] + [f"={f}" for f in args.formulations]
    if file is not None:
        file.write(header + "\n")
    emit(f"\n## Layers: time / static conv (min of {args.repeats}); mem = saved-for-backward / static")
    for res in args.res:
        shapes = zoo_shapes(res, SETTINGS[res], args.zoo)
        if args.quick:
            shapes = [s for s in shapes if s.kernel_size != (1, 1) or s.kernel_num > 1][:QUICK_SHAPES]
        emit(f"\n### {res}px, batch {SETTINGS[res]}: {len(shapes)} distinct shapes")
        emit(f"{'shape':42s} {'pass':7s} {'static ms':>9s} " + " ".join(f"{c:>9s}" for c in cols) + "  choice")
        for s in shapes:
            for train in (False, True):
                v = layer_variants(s, device, args.formulations, train)
                t, m = compare(v, device, args.repeats)
                row = " ".join(f"{t[c] / t['static']:9.2f}" if c in t else f"{'-':>9s}" for c in cols)
                emit(f"{fmt_shape(s):42s} {'fwd+bwd' if train else 'fwd':7s} {t['static'] * 1e3:9.2f} {row}  "
                     f"{choose(s, device.type, train)}")
                if train:
                    mrow = " ".join(f"{m[c] / max(m['static'], 1):9.2f}" if c in m else f"{'-':>9s}" for c in cols)
                    emit(f"{'':42s} {'mem':7s} {m['static'] / 2**20:8.1f}M {mrow}")
    if file is not None:
        file.close()


LAYER_ROW = re.compile(r"(.{42}) (fwd\+bwd|fwd|mem)\s+(.*)")
SHAPE = re.compile(r"(\d+)->(\d+)\s+(\d+)x(\d+) s(\d+) g(\d+)\s+K(\d+)\s+(\d+)px b(\d+)")


def summarize_layers(path: str, slower: float = 1.10) -> None:
    """Re-read a saved layer table and, with the current dispatch rules, print every row where the formulation
    they choose was measured slower than the released code by more than `slower` (time) or keeps more memory.

    Where the rules chose the same formulation as when the table was measured, its "ours" column is used (it
    carries no `use_formulation` overhead, which matters for sub-millisecond layers); otherwise its forced column.
    """
    cols, section, shape, old = [], "", None, None
    rows, ratios, flagged, memory = 0, [], [], 0
    for line in Path(path).read_text().splitlines():
        if line.startswith("###"):
            section = line.split(",")[0].lstrip("# ")
        elif line.startswith("shape"):
            cols = line.split()[3:-1]  # static ms, released, ours, =formulation...
        elif m := LAYER_ROW.match(line):
            text, kind, rest = m.groups()
            if text.strip():
                cin, cout, kh, kw, st, g, k, px, b = map(int, SHAPE.search(text).groups())
                shape = LayerShape(b, cin, cout, px, px, (kh, kw), (st, st), g, k, kh * kw > 1)
                label = text.strip()
            vals = rest.split()
            value = dict(zip(cols, vals))
            new = choose(shape, "cpu", kind != "fwd")
            if kind != "mem":
                old = vals[-1]
            mine = value["ours"] if new == old else value.get(f"={new}", "-")
            if mine == "-":
                continue
            ratio = float(mine) / float(value["released"])
            if kind != "mem":
                rows += 1
                ratios.append(ratio)
            if ratio > (slower if kind != "mem" else 1.001):
                memory += kind == "mem"
                flagged.append(f"{section:6s} {label:42s} {kind:8s} released {value['released']:>6s}  {new} {mine}")
    ratios.sort()
    print(f"{rows} time rows; chosen formulation over released: median {ratios[len(ratios) // 2]:.2f}, "
          f"{sum(r > 1.0 for r in ratios)} rows above 1.00, {sum(r > 1.05 for r in ratios)} above 1.05, "
          f"{sum(r > slower for r in ratios)} above {slower:.2f}; memory rows above released: "
          f"{memory}")
    print("\n".join(flagged))


def run_models(args, device):
    """Models over their static twins. With --dispatch, one column per dispatch mode ("ours:MODE") instead of
    "ours", each on its own copy of the same weights; "tune s" is the measured modes' first (tuning) call."""
    ours = [f"ours:{m}" for m in args.dispatch] or ["ours"]
    cols = ([] if args.skip_released else ["released"]) + ours
    tuned = [c for c in ours if c.endswith(":measured") or c.endswith(":auto")]
    print(f"\n## Models: time and memory / static twin (min of {args.model_repeats}, amp {args.amp})")
    print(f"{'model':22s} {'K':>2s} {'batch':>5s} {'res':>4s} {'pass':10s} {'static ms':>10s} "
          + " ".join(f"{c:>13s}" for c in cols) + " " + " ".join(f"{'mem ' + c:>17s}" for c in cols)
          + "".join(f" {'tune s':>7s}" for _ in tuned))
    rows = [r for r in MODEL_ROWS + FAMILY_ROWS if (not args.models or r[0] in args.models)
            and (not args.kernel_nums or r[1] in args.kernel_nums)]
    for name, k, batch, res in rows:
        odconv_row = name.startswith("od_")
        # ODConv 4x trains only (its eval is in the layer section); the later members are measured in both passes.
        passes = [("train", batch)] + ([("eval", 1), ("eval", batch)] if k == 1 or not odconv_row else [])
        for kind, b in passes:
            if args.passes and f"{kind}{b}" not in args.passes:
                continue
            v = model_variants(name, k, b, res, device, kind == "train",
                               released=odconv_row and not args.skip_released, modes=tuple(args.dispatch),
                               amp=args.amp, compile=args.compile)
            first: dict[str, float] = {}
            t, m = compare(v, device, args.model_repeats, first_call=first)
            ratio = lambda c: f"{t[c] / t['static']:13.2f}" if c in t else f"{'-':>13s}"  # noqa: E731
            mem = (" ".join(f"{m[c] / m['static']:17.2f}" if c in m else f"{'-':>17s}" for c in cols)
                   if kind == "train" and m["static"] else " " * 18 * len(cols))
            print(f"{name:22s} {k:2d} {b:5d} {res:4d} {kind:10s} {t['static'] * 1e3:10.1f} "
                  + " ".join(ratio(c) for c in cols) + " " + mem
                  + "".join(f" {first[c]:7.1f}" for c in tuned), flush=True)


def profile_model(spec: str, device, rows: int = 25) -> None:
    """torch.profiler table (self time, grouped by op and input shapes) of two training steps of one model, after
    a warm-up step, then the forward time of its ODConv layers by the formulation `explain` says they use.
    `spec` is NAME:K:BATCH:RES, e.g. od_resnet50:4:16:224."""
    from torch.profiler import profile, record_function

    name, k, batch, res = spec.split(":")
    model = timm.create_model(name, kernel_num=int(k), num_classes=10).to(device).train()
    x = torch.randn(int(batch), 3, int(res), int(res), device=device)
    y = torch.randint(0, 10, (int(batch),), device=device)
    used = {row[0]: row[2] for row in explain(model, x)}  # layer name -> formulation
    # Each ODConv layer's forward is one labelled range, so the profile can be read per formulation.
    ranges = {}

    def enter(mod, args, label):
        ranges[label] = record_function(label)
        ranges[label].__enter__()

    def leave(mod, args, out, label):
        ranges.pop(label).__exit__(None, None, None)

    hooks = []
    for layer, m in model.named_modules():
        if layer in used:
            label = f"odconv.{used[layer]}:{layer}"
            hooks.append(m.register_forward_pre_hook(lambda mod, a, label=label: enter(mod, a, label)))
            hooks.append(m.register_forward_hook(lambda mod, a, o, label=label: leave(mod, a, o, label)))

    def step():
        F.cross_entropy(model(x), y).backward()

    step()
    with profile(record_shapes=True) as prof:
        for _ in range(2):
            step()
    for h in hooks:
        h.remove()
    print(f"\n## Profile: {spec}, two training steps")
    print(prof.key_averages(group_by_input_shape=True).table(
        sort_by="self_cpu_time_total", row_limit=rows, max_name_column_width=36, max_shapes_column_width=90))
    per_formulation: dict[str, list] = {}
    for e in prof.key_averages():
        if e.key.startswith("odconv."):
            form = e.key.split(":")[0].removeprefix("odconv.")
            acc = per_formulation.setdefault(form, [0, 0.0])
            acc[0] += 1
            acc[1] += e.cpu_time_total / 1e3
    print(f"\n## ODConv layers by formulation: forward only, two steps")
    print(f"{'formulation':12s} {'layers':>6s} {'forward ms':>11s}")
    for form, (n, ms) in sorted(per_formulation.items(), key=lambda kv: -kv[1][1]):
        print(f"{form:12s} {n:6d} {ms:11.1f}")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--section", choices=["layers", "models", "all"], default="all")
    p.add_argument("--profile", metavar="NAME:K:BATCH:RES",
                   help="no timing table: torch.profiler's top ops (with input shapes) of two training steps")
    p.add_argument("--summarize", metavar="FILE",
                   help="no measurement: re-read a saved layer table and list where the current rules lose")
    p.add_argument("--res", type=int, nargs="+", default=[224, 32], choices=sorted(SETTINGS))
    p.add_argument("--quick", action="store_true", help=f"only the first {QUICK_SHAPES} non-trivial shapes")
    p.add_argument("--formulations", nargs="*", default=list(FORMULATIONS), choices=FORMULATIONS)
    p.add_argument("--zoo", nargs="+", default=list(ZOO), choices=ZOO, help="models whose layer shapes to run")
    p.add_argument("--models", nargs="*", default=[], help="subset of model names for the models section")
    p.add_argument("--kernel-nums", type=int, nargs="*", default=[], help="subset of K for the models section")
    p.add_argument("--passes", nargs="*", default=[], help="subset of model passes, e.g. train16 eval1 eval64")
    p.add_argument("--skip-released", action="store_true",
                   help="models without the released formulation (od_resnet18 at 32px, batch 64 needs >13 GB with it)")
    p.add_argument("--compile", action="store_true", help="models section: torch.compile every network first")
    p.add_argument("--dispatch", nargs="*", default=[], choices=DISPATCH_MODES,
                   help="models section: one column per ODConv dispatch mode (odconv.set_dispatch) instead of 'ours'")
    p.add_argument("--amp", choices=["none", "bf16"], default="none", help="models section: autocast dtype")
    p.add_argument("--out", metavar="FILE", help="layers section: also write the table to FILE (e.g. benchmarks/)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--model-repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: torch's default)")
    p.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                   help="cpu: CPU time of this process (with --threads 1, immune to other processes' load)")
    args = p.parse_args(argv)
    if args.summarize:
        summarize_layers(args.summarize)
        return
    bench_measure.CLOCK = time.process_time if args.clock == "cpu" else time.perf_counter
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if args.profile:
        profile_model(args.profile, device)
        return
    command = " ".join(["python scripts/bench_odconv.py"] + (sys.argv[1:] if argv is None else list(argv)))
    header = (f"torch {torch.__version__}, device {device}, threads {torch.get_num_threads()}, clock {args.clock}, "
              f"command: {command}")
    print(header)
    if args.section in ("layers", "all"):
        run_layers(args, device, header)
    if args.section in ("models", "all"):
        run_models(args, device)


if __name__ == "__main__":
    main()
