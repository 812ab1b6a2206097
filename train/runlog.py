"""Rank-0 outputs of a run: progress lines, metrics.jsonl, config.yaml, summary.json and wandb.

Every method is a no-op on ranks other than 0, so the loop calls them unconditionally.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from .atomic import atomic_write
from .config import WandbConfig


def _fmt_time(seconds: float) -> str:
    seconds = int(max(0, seconds))
    h, rem = divmod(seconds, 3600)
    return f"{h}:{rem // 60:02d}:{rem % 60:02d}"


class RunLogger:
    def __init__(self, run_dir: Path, is_main: bool, progress: bool = True):
        self.run_dir, self.is_main, self.progress = Path(run_dir), is_main, progress
        self.wandb_run = None
        if is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self._metrics = open(self.run_dir / "metrics.jsonl", "a", buffering=1)

    def info(self, msg: str) -> None:
        if self.is_main:
            print(msg, flush=True)

    def truncate_metrics(self, step: int) -> None:
        """On resume, drop the records of steps after the checkpoint: they are trained again."""
        if not self.is_main:
            return
        self._metrics.close()
        path = self.run_dir / "metrics.jsonl"
        kept = [line for line in path.read_text().splitlines() if line and json.loads(line)["step"] <= step]
        with atomic_write(path, "w") as f:
            f.write("".join(line + "\n" for line in kept))
        self._metrics = open(path, "a", buffering=1)

    def error(self, msg: str) -> None:
        if self.is_main:
            print(f"error: {msg}", file=sys.stderr, flush=True)

    def write_config(self, text: str) -> None:
        if self.is_main:
            (self.run_dir / "config.yaml").write_text(text)

    def log(self, record: dict) -> None:
        """Append one record to metrics.jsonl (and wandb); `kind` is train or val."""
        if not self.is_main:
            return
        record = {**record, "time": time.time()}
        self._metrics.write(json.dumps(record) + "\n")
        if self.wandb_run is not None:
            prefix = record["kind"] + ("_ema" if record.get("ema") else "")
            data = {f"{prefix}/{k}": v for k, v in record.items() if isinstance(v, (int, float)) and k != "step"}
            self.wandb_run.log(data, step=record["step"])

    def train_line(self, *, epoch: int, epochs: int, batch: int, batches: int, loss: float, lr: float,
                   temperature: float, images_per_s: float, eta_s: float) -> None:
        if self.is_main and self.progress:
            print(f"epoch {epoch + 1}/{epochs} [{batch}/{batches}] loss {loss:.4f} lr {lr:.4g} "
                  f"T {temperature:.2f} {images_per_s:.0f} img/s eta {_fmt_time(eta_s)}", flush=True)

    def write_summary(self, summary: dict) -> None:
        if self.is_main:
            with atomic_write(self.run_dir / "summary.json", "w") as f:
                f.write(json.dumps(summary, indent=2) + "\n")

    def start_wandb(self, cfg: WandbConfig, run_id: str | None, config: dict, run_name: str) -> str | None:
        """Start or continue (same id, resume='allow') the wandb run; returns its id for the checkpoint."""
        if not self.is_main or cfg.mode == "disabled":
            return run_id
        import wandb

        self.wandb_run = wandb.init(
            project=cfg.project, entity=cfg.entity, name=cfg.name or run_name, tags=list(cfg.tags),
            mode=cfg.mode, id=run_id, resume="allow", dir=str(self.run_dir), config=config,
        )
        return self.wandb_run.id

    def close(self) -> None:
        if self.is_main:
            self._metrics.close()
            if self.wandb_run is not None:
                self.wandb_run.finish()
                self.wandb_run = None
