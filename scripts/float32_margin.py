"""How much room the float32 tolerance of the ODConv tests leaves, over seeds: every formulation x shape x
train/eval of tests/test_fast_odconv.py's grid, the measured relative error against the float64 reference divided
by the derived bound (tests/odconv_reference.py, `float32_error_bound`). A ratio of 1 would fail a test.

    python scripts/float32_margin.py --seeds 0 1 2 3

Prints the worst ratio per quantity and the case that reached it. The bound is computed in float64 only, so it is
the same on every CPU; the errors are this CPU's, which is why this script exists: run it on a new machine to see
its margin.
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "tests"), str(REPO)]

from odconv_reference import float32_error_bound, reference_odconv  # noqa: E402
from test_fast_odconv import CASES, FAST_SHAPES, _errors, _layer, _run  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3])
    args = ap.parse_args()
    torch.set_num_threads(1)
    ratios: dict[str, list[float]] = {}
    worst = (0.0, "")
    for seed in args.seeds:
        for formulation, name in CASES:
            for training in (True, False):
                shape = FAST_SHAPES[name]
                b, h, w = shape[-3:]
                torch.manual_seed(seed)
                layer = _layer(shape)
                x, y, grad_out = _run(layer, torch.randn(b, shape[0], h, w), training, formulation)
                errors = _errors(layer, x, y, grad_out, training, torch.float64)
                bound = float32_error_bound(layer, x, grad_out,
                                            lambda x64, p: reference_odconv(x64, layer, p, training))
                for k, e in errors.items():
                    r = e / bound[k]
                    ratios.setdefault(k.rsplit(".", 1)[-1] if k.startswith("grad of attention") else k, []).append(r)
                    if r > worst[0]:
                        where = f"{formulation}-{name}-{'train' if training else 'eval'} seed {seed}, {k}"
                        worst = (r, f"{where}: error {e:.2e}, bound {bound[k]:.2e}")
    print(f"seeds {args.seeds}, {len(CASES) * 2} cases each; error / bound (1 would fail):")
    for k, v in ratios.items():
        print(f"  {k:24s} worst {max(v):.3f}  median {statistics.median(v):.4f}  ({len(v)} values)")
    print(f"worst: {worst[0]:.3f} at {worst[1]}")


if __name__ == "__main__":
    main()
