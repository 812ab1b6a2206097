"""Per-epoch validation of a run in each BatchNorm mode, as a Markdown table: the evaluation the run reports (after
precise BN when `trainer.precise_bn_batches` was set), eval mode with the moving averages of training, and
train-mode BatchNorm (each validation batch's own statistics). The last two are logged by runs trained with
`trainer.val_bn_diagnostics=true`; a wide gap between them says the moving averages, not the network, are off.

    python scripts/eval_modes.py RUN_DIR [RUN_DIR ...]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

DASH = "—"


def _pair(record: dict, loss: str, top1: str) -> str:
    if record.get(loss) is None:
        return DASH
    return f"{record[top1]:.2f} / {record[loss]:.3f}"


def epoch_table(run_dir: Path) -> str:
    """One row per evaluated epoch: mean training loss of the epoch, then top-1 / loss in each mode."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        raise SystemExit(f"error: {path} does not exist (give a run directory)")
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    val = {r["epoch"]: r for r in records if r.get("kind") == "val" and not r.get("ema")}  # a resumed run: last wins
    train: dict[int, list[float]] = {}
    for r in records:
        if r.get("kind") == "train":
            train.setdefault(r["epoch"], []).append(r["loss"])
    lines = ["| epoch | train loss | reported top-1 / loss | moving averages | batch statistics |",
             "|---:|---:|---:|---:|---:|"]
    for epoch in sorted(val):
        r = val[epoch]
        loss = f"{statistics.fmean(train[epoch]):.3f}" if epoch in train else DASH
        lines.append(f"| {epoch + 1} | {loss} | {_pair(r, 'loss', 'top1')} | {_pair(r, 'running_loss', 'running_top1')}"
                     f" | {_pair(r, 'batch_stats_loss', 'batch_stats_top1')} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    args = parser.parse_args(argv)
    for run_dir in args.runs:
        print(f"### {run_dir}\n\n{epoch_table(run_dir)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
