"""The GPU check: one command to run unchanged on a CUDA machine, printing one markdown report in under 8 minutes.

Sections, each in its own process with its own time limit (so one hung section cannot take the others' time):

- formulations: every ODConv formulation on a few layer shapes against the float64 per-sample reference
  (tests/odconv_reference.py, run on the CPU), forward and every gradient, in float32 (TF32 off) and under bf16
  autocast;
- models: training step (bf16 autocast; float32 on a CPU) time and peak memory over the static twin for the five headline rows at
  batch 64, with the rules, the measured dispatch and the released formulation (`grouped` forced everywhere); a ratio
  outside RATIO_RANGE is a broken measurement and fails the section;
- demo: 200 steps of the demo training (`train.py`, Hydra, the real loop) on CUDA with bf16;
- ddp: the same demo for 20 steps in two processes (torchrun, NCCL) when two GPUs are visible.

On a machine without a GPU it says so and exits 0. `--device cpu --quick` runs every section on tiny sizes on the
CPU (DDP with gloo): what tests/test_gpu_check.py runs. Exit status: 0 when every section that ran passed, 1 if a
check failed, a section crashed or ran out of time. Progress goes to stderr, the report to stdout:

    bash scripts/gpu_check.sh > gpu_check.md
    python scripts/gpu_check.py --device cpu --quick
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from copy import deepcopy
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "scripts"), str(REPO / "tests"), str(REPO)]

SECTIONS = ("formulations", "models", "demo", "ddp")
# Seconds per section: 440 of the 8 minutes, the rest for process start-up and the report.
BUDGET = {"formulations": 60, "models": 200, "demo": 100, "ddp": 80}
QUICK_BUDGET = {"formulations": 240, "models": 400, "demo": 300, "ddp": 300}  # a loaded 2-core CPU
TOTAL_S = 480

# Layer shapes of the formulation check: (name, C_in, C_out, k, stride, groups, K, batch, H=W).
LAYERS = [("3x3 K1 14px", 32, 32, 3, 1, 1, 1, 8, 14), ("3x3 K4 s2 15px", 32, 64, 3, 2, 1, 4, 8, 15),
          ("3x3 K1 2px", 64, 64, 3, 1, 1, 1, 8, 2), ("1x1 K1 14px", 64, 32, 1, 1, 1, 1, 8, 14),
          ("1x1 K4 7px", 32, 64, 1, 1, 1, 4, 8, 7), ("depthwise 3x3", 32, 32, 3, 1, 32, 1, 8, 14),
          ("3x3 g4 K2 9px", 32, 32, 3, 1, 4, 2, 4, 9)]
FLOAT32_FLOOR = 1e-4  # relative error; float32 rounding of these sums is ~1e-6, cuDNN's algorithms add a little
BF16_TOL = {"output": 3e-2, "input grad": 3e-2, "param grad": 5e-2}  # 8-bit mantissa over a few hundred terms
DEMO_STEPS, DDP_STEPS = (10, 20), (1, 20)  # (epochs, steps per epoch) of the demo data (22 steps per epoch)
DEMO_MIN_TOP1 = 80.0  # the CPU demo reaches 88-92% in 110 steps
# A time or memory ratio over the static twin outside this range is a broken measurement (a variant that did not run,
# a clock that did not tick, a 100x regression), not a speed to report: the models section fails on it.
RATIO_RANGE = (0.1, 100.0)


def check_formulations(device: torch.device, quick: bool) -> bool:
    from odconv import FORMULATIONS, ODConv2d
    from odconv.formulations import REGISTRY

    if device.type == "cuda":
        torch.backends.cudnn.allow_tf32 = False  # float32 means float32 here; TF32 would be a 1e-3 check
        torch.backends.cuda.matmul.allow_tf32 = False
    layers = LAYERS[:3] + LAYERS[4:6] if quick else LAYERS
    print("## Formulations against the float64 reference\n")
    print("Worst relative error over the output, the input gradient and every parameter gradient (train mode, "
          "random output gradient), against the per-sample float64 reference on the CPU. `-`: the formulation "
          f"cannot compute the layer. float32 allowed: max({FLOAT32_FLOOR:g}, 5x the reference's own float32 "
          f"error); bf16 autocast: {BF16_TOL['output']:g} (output, input grad), {BF16_TOL['param grad']:g} "
          "(parameter grads).\n")
    print("| layer | " + " | ".join(f"{f} fp32 | {f} bf16" for f in FORMULATIONS) + " |")
    print("|---|" + "---:|---:|" * len(FORMULATIONS))
    ok = True
    for name, cin, cout, k, stride, groups, kn, b, hw in layers:
        cells = []
        for form in FORMULATIONS:
            torch.manual_seed(0)
            layer = ODConv2d(cin, cout, k, stride, k // 2, groups=groups, kernel_num=kn).to(device).train()
            x = torch.randn(b, cin, hw, hw, device=device)
            if not REGISTRY[form].can_compute(layer.layer_shape(x)):  # forcing it would raise
                cells += ["-", "-"]
                continue
            layer.formulation = form
            with torch.no_grad():
                grad_out = torch.randn(layer(x).shape).to(device)
            ref = deepcopy(layer).cpu()
            expected = _reference(ref, x, grad_out, torch.float64)
            # The kernel attention's gradient cancels to a small vector: the reference itself, run in float32,
            # can be above 1e-5 there; allow five times its own error (as tests/test_fast_odconv.py does).
            own = _errors(_reference(ref, x, grad_out, torch.float32), expected)
            for dtype in (torch.float32, torch.bfloat16):
                errors = _errors(_run_layer(layer, x, grad_out, dtype), expected)
                tol = ({e: max(FLOAT32_FLOOR, 5 * own[e]) for e in errors} if dtype == torch.float32 else
                       {e: BF16_TOL.get(e, BF16_TOL["param grad"]) for e in errors})
                worst = max(errors, key=lambda e: errors[e] / tol[e])
                passed = errors[worst] < tol[worst]
                ok &= passed
                cells.append(f"{errors[worst]:.1e}" + ("" if passed else f" **FAIL** ({worst})"))
        print(f"| {name} | " + " | ".join(cells) + " |", flush=True)
    print(f"\n{'All within tolerance.' if ok else 'FAILED: see the cells marked FAIL.'}")
    return ok


def _run_layer(layer, x, grad_out, dtype):
    """(output, input grad, {parameter: grad}) of the layer under test, float32 or bf16 autocast."""
    layer.zero_grad(set_to_none=True)
    x = x.detach().clone().requires_grad_()
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
        y = layer(x)
    y.backward(grad_out.to(y.dtype))
    return y, x.grad, {n: p.grad for n, p in layer.named_parameters()}


def _reference(ref, x, grad_out, dtype):
    """The same triple from tests/odconv_reference.py in `dtype`, on the CPU copy `ref` of the layer."""
    from odconv_reference import float64_params, reference_odconv

    p = {n: v.to(dtype).detach().requires_grad_(v.requires_grad) for n, v in float64_params(ref).items()}
    x = x.detach().cpu().to(dtype).requires_grad_()
    y = reference_odconv(x, ref, p, True)
    y.backward(grad_out.cpu().to(dtype))
    return y, x.grad, {n: p[n].grad for n, _ in ref.named_parameters()}


def _errors(got, expected) -> dict[str, float]:
    from odconv_reference import rel_err

    (y, gx, gp), (y_ref, gx_ref, gp_ref) = got, expected
    errors = {"output": rel_err(y.cpu(), y_ref), "input grad": rel_err(gx.cpu(), gx_ref)}
    errors.update({f"grad of {n}": rel_err(g.cpu(), gp_ref[n]) for n, g in gp.items()})
    return errors


def check_models(device: torch.device, quick: bool, budget: float) -> bool:
    from bench_measure import MODEL_ROWS, compare, model_variants

    start = time.monotonic()
    batch, repeats = (2, 1) if quick else (64, 5)
    cols = ["ours:rules", "ours:measured", "grouped"]
    memory = "peak memory during the step" if device.type == "cuda" else "bytes saved for backward (CPU proxy)"
    print("## Models: training step over the static twin\n")
    # bf16 on CUDA, as users train there; float32 on the CPU, whose bf16 convolutions are 10x slower here.
    amp = "bf16" if device.type == "cuda" else "none"
    print(f"Forward, cross-entropy and backward ({'bf16 autocast' if amp == 'bf16' else 'float32'}), "
          f"batch {batch}, minimum of {repeats} "
          f"interleaved repeats after a warm-up call (where the measured dispatch tunes: `tune s`). Memory: {memory}."
          " `grouped` is the released formulation forced in every layer.\n")
    print("| model | K | res | static ms | rules | measured | grouped | static MiB | mem rules | mem measured | "
          "mem grouped | tune s |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    slowest, ok = 0.0, True
    for name, k, _, res in MODEL_ROWS:
        res = 32 if quick else res
        if time.monotonic() - start + 1.5 * slowest > budget:
            print(f"| {name} | {k} | {res} | not run: out of time |")
            continue
        t0 = time.monotonic()
        v = model_variants(name, k, batch, res, device, True, released=False, modes=("rules", "measured"),
                           grouped=True, amp=amp)
        first: dict[str, float] = {}
        t, m = compare(v, device, repeats, first_call=first)
        del v
        times, row_ok = _ratio_cells([t[c] / t["static"] for c in cols])
        mems, mem_ok = _ratio_cells([m[c] / max(m["static"], 1) for c in cols])
        ok &= row_ok and mem_ok
        print(f"| {name} | {k} | {res} | {t['static'] * 1e3:.1f} | {' | '.join(times)} | "
              f"{m['static'] / 2**20:.0f} | {' | '.join(mems)} | {first['ours:measured']:.1f} |", flush=True)
        slowest = max(slowest, time.monotonic() - t0)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    if not ok:
        print(f"\nFAILED: ratios marked FAIL are outside {RATIO_RANGE}: a broken measurement.")
    return ok


def _ratio_cells(ratios: list[float]) -> tuple[list[str], bool]:
    """Table cells of ratios over the static twin, each outside RATIO_RANGE (NaN included) marked FAIL."""
    inside = [RATIO_RANGE[0] < r < RATIO_RANGE[1] for r in ratios]
    return [f"{r:.2f}" + ("" if good else " **FAIL**") for r, good in zip(ratios, inside)], all(inside)


def train_command(device: str, quick: bool, processes: int, run_dir: Path, cache_dir: str | None) -> list[str]:
    """`python train.py` (or torchrun with `processes`) on the demo data, bf16, a fixed number of steps."""
    epochs, steps = DDP_STEPS if processes > 1 else DEMO_STEPS
    args = [f"trainer.device={device}", "trainer.amp=bf16", f"trainer.epochs={1 if quick else epochs}",
            f"trainer.limit_train_batches={2 if quick else steps}", "trainer.progress=false",
            f"paths.run_dir={run_dir}", "run_name=gpu_check"]
    if quick:
        args += ["trainer.limit_val_batches=1", "trainer.threads=1", "data.workers=0"]
    if cache_dir:
        args.append(f"paths.cache_dir={cache_dir}")
    launcher = [sys.executable]
    if processes > 1:
        launcher += ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
    return launcher + [str(REPO / "train.py"), *args]


def report_training(title: str, proc: Run, run_dir: Path, device: str, processes: int, min_top1: float) -> bool:
    """Markdown for one training run from its exit status, stdout and summary.json."""
    summary_file = run_dir / "summary.json"
    summary = json.loads(summary_file.read_text()) if summary_file.exists() else {}
    on_device = f"{processes} process(es) on {device}" in proc.stdout
    top1 = summary.get("best_top1", float("nan"))
    ok = (proc.returncode == 0 and summary.get("status") == "completed" and on_device and top1 >= min_top1)
    print(f"## {title}\n")
    print(f"`{' '.join(proc.command)}`\n")
    print("| exit | status | processes on device | steps | best top-1 % | wall s |\n|---:|---|---|---:|---:|---:|")
    print(f"| {proc.returncode} | {summary.get('status', 'no summary.json')} | "
          f"{'yes' if on_device else 'NO'} ({processes} on {device}) | {summary.get('step', '-')} | {top1:.2f} | "
          f"{proc.seconds:.0f} |\n")
    if min_top1 > 0:
        print(f"Learned: best top-1 at least {min_top1:g}%: {'yes' if top1 >= min_top1 else 'NO'}.")
    if not ok:
        print("\nLast output:\n```\n" + _tail(proc.stdout + proc.stderr) + "\n```")
    return ok


class Run:
    """A finished (or killed) subprocess: command, exit status (None: timed out), output, seconds."""

    def __init__(self, command, returncode, stdout, stderr, seconds):
        self.command, self.returncode, self.stdout, self.stderr, self.seconds = (
            command, returncode, stdout, stderr, seconds)


def run_with_timeout(command: list[str], timeout: float, env: dict | None = None) -> Run:
    """Run `command` in its own process group; after `timeout` seconds kill the whole group (torchrun's workers
    too) and keep what it printed so far."""
    start = time.monotonic()
    proc = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, env={**os.environ, **(env or {})})
    try:
        out, err = proc.communicate(timeout=timeout)
        code = proc.returncode
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        code = None
    return Run(command, code, out, err, time.monotonic() - start)


def _tail(text: str, lines: int = 25) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def machine(device: torch.device) -> str:
    if device.type == "cuda":
        gpus = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
        what = (f"{torch.cuda.device_count()} GPU(s): {gpus}; CUDA {torch.version.cuda}, "
                f"cuDNN {torch.backends.cudnn.version()}")
    else:
        what = f"CPU only ({os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f})"
    return f"torch {torch.__version__}, {what}, {platform.machine()}, {datetime.datetime.now():%Y-%m-%d %H:%M}"


def run_sections(args) -> int:
    device = torch.device(args.device)
    gpus = torch.cuda.device_count() if device.type == "cuda" else 0
    budget = QUICK_BUDGET if args.quick else BUDGET
    deadline = time.monotonic() + args.total
    print("# ODConv GPU check\n")
    print(f"{machine(device)}. Command: `python scripts/gpu_check.py {' '.join(args.argv)}`\n")
    results = []
    with tempfile.TemporaryDirectory(prefix="odconv-gpu-check-") as tmp:
        for section in args.sections:
            left = deadline - time.monotonic()
            limit = min(budget[section], left)
            print(f"[gpu_check] {section}: up to {limit:.0f} s", file=sys.stderr, flush=True)
            if section == "ddp" and device.type == "cuda" and gpus < 2:
                results.append((section, f"skipped: needs 2 GPUs, {gpus} visible", 0.0))
                continue
            if limit < 10:
                results.append((section, "skipped: out of time", 0.0))
                continue
            if section in ("formulations", "models"):
                cmd = [sys.executable, __file__, "--section", section, "--device", args.device,
                       "--budget", str(int(limit * 0.8))] + (["--quick"] if args.quick else [])
                # A fresh dispatch cache: the measured dispatch tunes here, and its time is part of the report.
                run = run_with_timeout(cmd, limit, env={"ODCONV_CACHE": str(Path(tmp) / "odconv-cache")})
                print(run.stdout.strip() + "\n")
                ok = run.returncode == 0
                if run.returncode not in (0, None):
                    print("```\n" + _tail(run.stderr) + "\n```\n")
            else:
                processes = 2 if section == "ddp" else 1
                run_dir = Path(tmp) / section
                cmd = train_command(args.device, args.quick, processes, run_dir, args.cache_dir)
                run = run_with_timeout(cmd, limit, env={"WANDB_MODE": "disabled", "PYTHONPATH": str(REPO)})
                backend = "NCCL" if device.type == "cuda" else "gloo"
                title = (f"DDP: two processes, {backend}, bf16" if section == "ddp" else
                         f"Demo training: {'2' if args.quick else DEMO_STEPS[0] * DEMO_STEPS[1]} steps, bf16")
                ok = report_training(title, run, run_dir, args.device, processes,
                                     0.0 if args.quick or processes > 1 else DEMO_MIN_TOP1)
                print()
            status = "ok" if ok else ("timed out" if run.returncode is None else "FAILED")
            if run.returncode is None:
                print(f"{section}: timed out after {limit:.0f} s (output above is what it printed until then).\n")
            results.append((section, status, run.seconds))
    print("## Summary\n\n| section | result | seconds |\n|---|---|---:|")
    for section, status, seconds in results:
        print(f"| {section} | {status} | {seconds:.0f} |")
    # A section skipped for lack of a second GPU is fine; one skipped for lack of time was not checked.
    return 0 if all(s == "ok" or "needs 2 GPUs" in s for _, s, _ in results) else 1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    p.add_argument("--quick", action="store_true", help="tiny sizes (what the tests run on the CPU)")
    p.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    p.add_argument("--total", type=float, default=TOTAL_S, help="seconds for all sections together")
    p.add_argument("--cache-dir", default=None, help="demo data cache (paths.cache_dir; default: the project's)")
    p.add_argument("--section", choices=["formulations", "models"], help=argparse.SUPPRESS)  # one child process
    p.add_argument("--budget", type=float, default=0, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.argv = sys.argv[1:] if argv is None else list(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("# ODConv GPU check\n\nNo CUDA GPU found (torch "
              f"{torch.__version__}, CUDA build {torch.version.cuda or 'none'}): nothing to check.")
        return 0
    if args.section:
        device = torch.device(args.device)
        torch.manual_seed(0)
        if args.quick and device.type == "cpu":
            torch.set_num_threads(1)  # tiny tensors on a shared machine: one thread is fastest and steadiest
        if args.section == "formulations":
            return 0 if check_formulations(device, args.quick) else 1
        return 0 if check_models(device, args.quick, args.budget) else 1
    return run_sections(args)


if __name__ == "__main__":
    sys.exit(main())
