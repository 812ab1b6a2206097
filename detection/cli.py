"""Argument handling shared by `python -m detection.train` and `python -m detection.test`.

Imported only once `detection.stack` has found the detection stack (it imports mmengine).
"""
from __future__ import annotations

import argparse
import os
import sys

import torch
from mmengine.config import DictAction


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("config", help="mmdet config file, e.g. configs/mmdet/faster-rcnn_od4x-r50_fpn_1x_coco.py")
    p.add_argument("--work-dir", help="where logs, checkpoints and results go (default work_dirs/<config name>)")
    p.add_argument("--cfg-options", nargs="+", action=DictAction, metavar="KEY=VALUE",
                   help="override config entries, e.g. model.backbone.init_cfg.checkpoint=ckpt.pth")
    p.add_argument("--seed", type=int, help="random seed of the run (default: the config's randomness.seed, else 0); "
                   "recorded in <work dir>/randomness.json")
    p.add_argument("--launcher", choices=["none", "pytorch", "slurm", "mpi"], default="none",
                   help="'pytorch' under torchrun, 'slurm' under srun (one process per GPU; also on CPU with the gloo "
                        "backend)")
    return p


def prepare_launch(cfg) -> None:
    """Adapt the config to this machine before the Runner starts processes."""
    # mmdet's runtime asks for NCCL, which does not exist on CPU-only machines; gloo serves CPU runs.
    if not torch.cuda.is_available():
        cfg.env_cfg.setdefault("dist_cfg", {})["backend"] = "gloo"
        if cfg.launcher != "none":
            # mmengine pins DDP to the GPU of LOCAL_RANK; a CPU module must be wrapped with device_ids=None.
            cfg.model_wrapper_cfg = dict(type="MMDistributedDataParallel", device_ids=None, broadcast_buffers=False,
                                         find_unused_parameters=cfg.get("find_unused_parameters", False))
    os.environ.setdefault("LOCAL_RANK", "0")


def run(fn) -> None:
    """Call `fn()`, turning the errors a user can cause into one line on stderr and exit status 2."""
    from .runner import ConfigError, DataError
    import models

    try:
        fn()
    except (FileNotFoundError, ConfigError, DataError, models.CheckpointMismatchError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
