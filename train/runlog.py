"""Rank-0 outputs of a run: progress lines, metrics.jsonl, config.yaml, summary.json, W&B and TensorBoard.

Every method is a no-op on ranks other than 0, so the loop calls them unconditionally. The dashboards (W&B,
TensorBoard) get each metrics record as it is logged and, with summary.json, the run's figures (train/dashboard.py):
best/final top-1 and top-5, params, MACs, images/s, the published top-1 and the difference to it.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from . import dashboard
from .atomic import atomic_write
from .config import LoggerConfig


def _fmt_time(seconds: float) -> str:
    seconds = int(max(0, seconds))
    h, rem = divmod(seconds, 3600)
    return f"{h}:{rem // 60:02d}:{rem % 60:02d}"


class RunLogger:
    def __init__(self, run_dir: Path, is_main: bool, progress: bool = True):
        self.run_dir, self.is_main, self.progress = Path(run_dir), is_main, progress
        self.wandb_run = None
        self.tensorboard = None  # a torch SummaryWriter when logger.tensorboard is on
        self.config: dict = {}
        self._resumed_at: int | None = None  # the checkpoint's step on resume: later events are written again
        if is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self._metrics = open(self.run_dir / "metrics.jsonl", "a", buffering=1)

    def info(self, msg: str) -> None:
        if self.is_main:
            print(msg, flush=True)

    def start_fresh(self) -> None:
        """A run starting without a checkpoint in a directory that holds another run's records (its checkpoints
        deleted, say) sets them aside as metrics.jsonl.N instead of appending to them, which would give the report
        two runs' records under one name."""
        if not self.is_main:
            return
        path = self.run_dir / "metrics.jsonl"
        if not path.stat().st_size:
            return
        self._metrics.close()
        n = 1
        while (kept := path.with_name(f"metrics.jsonl.{n}")).exists():
            n += 1
        path.rename(kept)
        self.info(f"{path} held the records of a run with no checkpoint here: kept as {kept.name}; this run starts "
                  "afresh")
        self._metrics = open(path, "a", buffering=1)

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
        self._resumed_at = step

    def error(self, msg: str) -> None:
        if self.is_main:
            print(f"error: {msg}", file=sys.stderr, flush=True)

    def write_config(self, text: str) -> None:
        if self.is_main:
            (self.run_dir / "config.yaml").write_text(text)

    def log(self, record: dict) -> None:
        """Append one record to metrics.jsonl (and the dashboards); `kind` is train or val."""
        if not self.is_main:
            return
        record = {**record, "time": time.time()}
        self._metrics.write(json.dumps(record) + "\n")
        if self.wandb_run is None and self.tensorboard is None:
            return
        prefix = record["kind"] + ("_ema" if record.get("ema") else "")
        skip = {"step", "time"} | ({"temperature"} if not dashboard.has_temperature(self.config) else set())
        data = {f"{prefix}/{k}": v for k, v in record.items()
                if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in skip}
        if self.wandb_run is not None:
            self.wandb_run.log(data, step=record["step"])
        if self.tensorboard is not None:
            for tag, value in data.items():
                self.tensorboard.add_scalar(tag, value, record["step"])

    def train_line(self, *, epoch: int, epochs: int, batch: int, batches: int, loss: float, lr: float,
                   temperature: float, images_per_s: float, eta_s: float) -> None:
        if self.is_main and self.progress:
            # The temperature only for models that have one (a static, CondConv, DCD or FDConv run would show the
            # schedule's value, which nothing reads).
            t = f"T {temperature:.2f} " if dashboard.has_temperature(self.config) else ""
            print(f"epoch {epoch + 1}/{epochs} [{batch}/{batches}] loss {loss:.4f} lr {lr:.4g} "
                  f"{t}{images_per_s:.0f} img/s eta {_fmt_time(eta_s)}", flush=True)

    def write_summary(self, summary: dict) -> None:
        """summary.json, and the run's figures into the dashboards' summaries (W&B summary, TensorBoard hparams)."""
        if not self.is_main:
            return
        with atomic_write(self.run_dir / "summary.json", "w") as f:
            f.write(json.dumps(summary, indent=2) + "\n")
        if self.wandb_run is None and self.tensorboard is None:
            return
        self._metrics.flush()
        figures = self.figures(summary)
        if self.wandb_run is not None:
            self.wandb_run.summary.update({**{k: v for k, v in figures.items() if v is not None},
                                           "status": summary.get("status"), "epochs": summary.get("epochs")})
        if self.tensorboard is not None:
            self._write_hparams(figures, summary.get("step", 0))

    def figures(self, summary: dict) -> dict:
        """The run's figures from summary.json and the whole metrics.jsonl (earlier sessions of a resumed run too)."""
        records = []
        for line in (self.run_dir / "metrics.jsonl").read_text().splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:  # a line cut by a killed earlier session: the summary must still be written
                continue
        train = [r for r in records if r.get("kind") == "train"]
        val = [r for r in records if r.get("kind") == "val"]
        macs = dashboard.model_macs(self.config, summary.get("params"))
        return dashboard.figures(self.config, summary, train, val, macs)

    def start_dashboards(self, cfg: LoggerConfig, run_id: str | None, config: dict, run_name: str) -> str | None:
        """Open the TensorBoard writer and start or continue (same id, resume='allow') the W&B run; returns the W&B
        run id for the checkpoint."""
        if not self.is_main:
            return run_id
        self.config = config
        if cfg.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            # purge_step: TensorBoard drops the events after the checkpoint, which the resumed run writes again.
            self.tensorboard = SummaryWriter(str(self.run_dir / "tensorboard"),
                                             purge_step=None if self._resumed_at is None else self._resumed_at + 1)
        if cfg.wandb.mode == "disabled":
            return run_id
        import wandb

        # The group gathers a configuration's seeds, so W&B shows their mean and spread; the experiment name
        # (run_name, an experiment file's name) is a tag, so one filter finds every run of an experiment.
        w = cfg.wandb
        self.wandb_run = wandb.init(
            project=w.project, entity=w.entity, name=w.name or run_name, tags=list(dict.fromkeys(
                [*w.tags, str(config.get("run_name") or run_name)])), group=dashboard.group_name(config),
            job_type=str(config.get("mode") or "train"), mode=w.mode, id=run_id, resume="allow",
            dir=str(self.run_dir), config=config,
        )
        return self.wandb_run.id

    def _write_hparams(self, figures: dict, step: int) -> None:
        """The config as TensorBoard hyperparameters and the figures as their metrics (the HParams tab)."""
        from torch.utils.tensorboard.summary import hparams

        def plain(value):  # hparams take numbers, strings and booleans
            return value if isinstance(value, (bool, int, float, str)) else json.dumps(value)

        params = {k: plain(v) for k, v in dashboard.flatten(self.config).items()}
        metrics = {f"summary/{k}": v for k, v in figures.items() if v is not None}
        for summary in hparams(params, metrics):
            self.tensorboard.file_writer.add_summary(summary, step)
        for tag, value in metrics.items():
            self.tensorboard.add_scalar(tag, value, step)

    def close(self) -> None:
        if self.is_main:
            self._metrics.close()
            if self.tensorboard is not None:
                self.tensorboard.close()
                self.tensorboard = None
            if self.wandb_run is not None:
                self.wandb_run.finish()
                self.wandb_run = None
