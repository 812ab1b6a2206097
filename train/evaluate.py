"""Evaluation: top-1/top-5 over the validation set across ranks, and `mode=eval` on a saved or released checkpoint."""
from __future__ import annotations

import contextlib
import os

import torch
import torch.nn.functional as F
from torch import nn

from odconv import final_temperature, set_temperature

from . import distributed
from .builders import build_loaders, build_model, to_channels_last
from .config import ConfigError, TrainConfig
from .distributed import DistInfo
from .precise_bn import batch_statistics
from .skipped import SkipReport


def autocast(c: TrainConfig, device: torch.device):
    """The autocast context of trainer.amp (a no-op for none)."""
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(c.trainer.amp)
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)


@torch.no_grad()
def evaluate(model: nn.Module, loader, device: torch.device, autocast, limit: int | None = None, *,
             batch_stats: bool = False) -> dict:
    """Loss, top-1 and top-5 (percent) over the validation set, each image counted once across all ranks.
    batch_stats: BatchNorm normalises with each validation batch's own statistics (train-mode BatchNorm, dropout
    off; the running statistics are left untouched), the diagnostic beside the usual eval mode."""
    with batch_statistics(model) if batch_stats else contextlib.nullcontext():
        if not batch_stats:
            model.eval()
        return _evaluate(model, loader, device, autocast, limit)


def _evaluate(model: nn.Module, loader, device: torch.device, autocast, limit: int | None) -> dict:
    sums = torch.zeros(4, dtype=torch.float64, device=device)  # loss, top-1 hits, top-5 hits, images
    for i, batch in enumerate(loader):
        if limit is not None and i >= limit:
            break
        if batch is None:  # every image of this batch was unreadable
            continue
        x, y = batch[0].to(device, non_blocking=True), batch[1].to(device, non_blocking=True)
        with autocast():
            logits = model(x).float()
        hits = logits.topk(min(5, logits.shape[1]), dim=1).indices.eq(y[:, None])
        sums += torch.stack([F.cross_entropy(logits, y, reduction="sum").double(), hits[:, 0].sum().double(),
                             hits.any(dim=1).sum().double(), torch.tensor(len(y), dtype=torch.float64,
                                                                          device=device)])
    loss, top1, top5, n = distributed.all_reduce_sum(sums.tolist(), device)
    n = max(n, 1.0)
    return {"loss": loss / n, "top1": 100.0 * top1 / n, "top5": 100.0 * top5 / n, "images": int(n)}


def evaluate_checkpoint(c: TrainConfig, di: DistInfo) -> dict:
    """mode=eval: top-1/top-5 of a checkpoint (ours, or a released one) on the configured validation set."""
    from models.checkpoint import extract_state_dict, load_state_dict_checked, load_weights_only

    if not os.path.isfile(c.checkpoint):
        raise ConfigError(f"checkpoint {c.checkpoint} does not exist")
    try:  # read first: a wrong path or file fails before any data is read
        ck = load_weights_only(c.checkpoint)
        state = extract_state_dict(ck, c.checkpoint)
    except ValueError as e:  # not a checkpoint (UnreadableCheckpointError), or no state dict inside
        raise ConfigError(f"checkpoint: {e}") from None
    loaders = build_loaders(c, di)
    model = build_model(c, loaders.num_classes)
    try:
        load_state_dict_checked(model, state, source=c.checkpoint)
    except ValueError as e:
        raise ConfigError(f"checkpoint {c.checkpoint} does not fit model.name={c.model.name}: {e}") from None
    # Released checkpoints are fully trained (temperature 1; KernelWarehouse's tau 0); ours record the temperature
    # they were saved at.
    final = final_temperature(model)
    set_temperature(model, float(ck.get("temperature", final)) if isinstance(ck, dict) else final)
    model = model.to(di.device)
    if c.trainer.channels_last:
        model = to_channels_last(model)
    amp = lambda: autocast(c, di.device)  # noqa: E731
    results = {"model": evaluate(model, loaders.val, di.device, amp, c.trainer.limit_val_batches)}
    if isinstance(ck, dict) and ck.get("ema"):
        model.load_state_dict({k.removeprefix("module."): v for k, v in ck["ema"].items()})
        results["ema"] = evaluate(model, loaders.val, di.device, amp, c.trainer.limit_val_batches)
    skipped = SkipReport([loaders.val.dataset], di.device, di.is_main).update()  # warns once per file
    if di.is_main:
        for name, m in results.items():
            print(f"{name}: top-1 {m['top1']:.2f}% top-5 {m['top5']:.2f}% loss {m['loss']:.4f} "
                  f"({m['images']} images) | {c.checkpoint}", flush=True)
        if skipped:
            print(f"{skipped} unreadable validation image(s) skipped and not counted", flush=True)
    return results
