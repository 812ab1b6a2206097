"""Train or test an mmdet config with mmengine's Runner, after checking the data files it names.

`train(cfg)` and `test(cfg, checkpoint)` are what the `detection.train` / `detection.test` commands call and what
the tests call directly. Under `torchrun` set `cfg.launcher = 'pytorch'` (the commands' `--launcher pytorch`).

Runs are seeded: `randomness.seed` is 0 unless the config, `--seed N` or `--cfg-options randomness.seed=N` says
otherwise, and the seed a run used is written to `<work dir>/randomness.json`. On a CPU a seed fixes the run
exactly; on GPUs add `randomness.deterministic=True` (slower) for bit-identical repeats.
"""
from __future__ import annotations

import json
import os.path as osp
from typing import Optional

from mmengine.config import Config
from mmengine.runner import Runner

from . import plugins  # noqa: F401  (torch-compat fixes and registration of our modules happen on import)
from train.atomic import atomic_write  # stdlib only: no training stack is imported

from .checkpoint import load_detector_checkpoint

DEFAULT_SEED = 0


class DataError(ValueError):
    """A data file named by the config is missing or is not COCO JSON."""


class ConfigError(ValueError):
    """A setting given on the command line or in the config is invalid."""


def load_config(path: str, cfg_options: Optional[dict] = None, work_dir: Optional[str] = None,
                launcher: str = "none", seed: Optional[int] = None) -> Config:
    """Read a config, apply `--cfg-options` and `--seed`, and pick its work_dir (default work_dirs/<config name>)."""
    if not osp.isfile(path):
        raise FileNotFoundError(f"config file not found: {path}")
    if seed is not None and (cfg_options or {}).get("randomness.seed", seed) != seed:
        raise ConfigError(f"--seed {seed} and --cfg-options randomness.seed={cfg_options['randomness.seed']} "
                         "disagree; give one")
    cfg = Config.fromfile(path)
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    randomness = dict(cfg.get("randomness") or {})
    if seed is not None:
        randomness["seed"] = seed
    elif randomness.get("seed") is None:  # mmengine would draw a fresh seed: runs could not be repeated
        randomness["seed"] = DEFAULT_SEED
    if not isinstance(randomness["seed"], int) or not 0 <= randomness["seed"] < 2**32:
        raise ConfigError(f"randomness.seed must be an integer in [0, 2**32), got {randomness['seed']!r}")
    cfg.randomness = randomness
    cfg.launcher = launcher
    if work_dir is not None:
        cfg.work_dir = work_dir
    elif cfg.get("work_dir") is None:
        cfg.work_dir = osp.join("work_dirs", osp.splitext(osp.basename(path))[0])
    return cfg


def _check_coco_json(path: str, role: str) -> None:
    if not osp.isfile(path):
        raise DataError(f"annotation file not found: {path} ({role})")
    try:
        with open(path) as f:
            coco = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"annotation file {path} is not valid JSON: {e}") from e
    if not isinstance(coco, dict):
        raise DataError(f"annotation file {path} is not COCO JSON: expected an object, found {type(coco).__name__}")
    for key in ("images", "annotations", "categories"):
        if not isinstance(coco.get(key), list):
            raise DataError(f"annotation file {path} is not COCO JSON: no '{key}' list")


def _check_dataset(ds: dict, role: str) -> None:
    while "dataset" in ds:  # wrappers such as RepeatDataset / ClassBalancedDataset
        ds = ds["dataset"]
    root = ds.get("data_root") or ""
    if ds.get("ann_file"):
        _check_coco_json(osp.join(root, ds["ann_file"]), f"{role}.ann_file")
    img = (ds.get("data_prefix") or {}).get("img")
    if img is not None and not osp.isdir(osp.join(root, img)):
        raise DataError(f"image directory not found: {osp.join(root, img)} ({role}.data_prefix.img)")


def check_data(cfg: Config, stages: tuple[str, ...]) -> None:
    """Fail before any work when a data file the given stages ('train', 'val', 'test') read is missing or bad."""
    for stage in stages:
        loader = cfg.get(f"{stage}_dataloader")
        if loader is None:
            raise DataError(f"the config has no {stage}_dataloader")
        _check_dataset(loader["dataset"], f"{stage}_dataloader.dataset")
        evaluator = cfg.get(f"{stage}_evaluator")
        if stage != "train" and isinstance(evaluator, dict) and evaluator.get("ann_file"):
            _check_coco_json(evaluator["ann_file"], f"{stage}_evaluator.ann_file")


def train(cfg: Config) -> Runner:
    """Train (and validate every `val_interval` epochs) as the config says; returns the finished Runner."""
    check_data(cfg, ("train", "val") if cfg.get("val_cfg") else ("train",))
    runner = Runner.from_cfg(cfg)
    if runner.rank == 0:
        _write_json(osp.join(runner.work_dir, "randomness.json"),
                    dict(seed=runner.seed, deterministic=runner.deterministic,
                         diff_rank_seed=bool(cfg.randomness.get("diff_rank_seed", False))))
    runner.train()
    return runner


def test(cfg: Config, checkpoint: str, out_prefix: Optional[str] = None) -> dict:
    """Evaluate `checkpoint` on the test set; writes `<out_prefix>.bbox.json` (and `.segm.json`), the COCO
    result files, plus `<out_prefix>.metrics.json`, and returns the metrics (pycocotools prints the 12 numbers)."""
    if not osp.isfile(checkpoint):
        raise FileNotFoundError(f"checkpoint file not found: {checkpoint}")
    check_data(cfg, ("test",))
    out_prefix = out_prefix or osp.join(cfg.work_dir, "results")
    cfg.load_from = None  # mmengine would load it non-strictly; ours accepts both layouts and checks every key
    for evaluator in _as_list(cfg.test_evaluator):
        evaluator["outfile_prefix"] = out_prefix
    runner = Runner.from_cfg(cfg)
    load_detector_checkpoint(runner.model, checkpoint)
    metrics = runner.test()
    if runner.rank == 0:
        # Numbers as floats; a metric's warning (e.g. no detections at all) as its text.
        _write_json(f"{out_prefix}.metrics.json",
                    {k: v if isinstance(v, str) else float(v) for k, v in metrics.items()})
    return metrics


def _write_json(path: str, obj: dict) -> None:
    with atomic_write(path) as f:  # a reader never sees half a file
        json.dump(obj, f, indent=1)


def _as_list(x) -> list:
    return list(x) if isinstance(x, (list, tuple)) else [x]
