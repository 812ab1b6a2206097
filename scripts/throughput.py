"""Throughput benchmark: images/s of the training step and of the data pipeline, to size cluster jobs.

    python scripts/throughput.py --models od_resnet18:4 static_resnet18 --batch-size 16 --img-size 224
    python scripts/throughput.py --models none --data folder --data-root /data/imagenet --workers 0 4 8
    python scripts/throughput.py --models none --data synthetic --workers 0 2   # ImageNet-sized JPEGs, made here

Training step = forward + backward + optimizer step (SGD, momentum 0.9) on random tensors already on the device, so
it measures compute only. Data pipeline = file decode + timm training transforms + DataLoader with N workers + collate,
no model. A run needs both to be above the target rate: the slower one is the job's speed.
A model is given as NAME or NAME:KERNEL_NUM (ODConv models; default 1 kernel).
"""
from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `python scripts/throughput.py` from a checkout


def parse_model(spec: str) -> tuple[str, dict]:
    name, _, k = spec.partition(":")
    if k and not k.isdigit():
        raise ValueError(f"model {spec!r}: the kernel number after ':' must be an integer")
    return name, (dict(kernel_num=int(k)) if k else {})


def train_step_rate(model_spec: str, *, batch_size: int, img_size: int, steps: int, warmup: int,
                    device: torch.device, amp: str, channels_last: bool, num_classes: int = 1000) -> dict:
    import timm

    from models import count_params  # importing models registers the zoo with timm

    name, kwargs = parse_model(model_spec)
    model = timm.create_model(name, num_classes=num_classes, **kwargs).to(device).train()
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    if channels_last:  # the 4-D kernels only: the dynamic convs' stacked kernels are 5-D (train/builders.py)
        from train.builders import to_channels_last
        model = to_channels_last(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    x = torch.randn(batch_size, 3, img_size, img_size, device=device).to(memory_format=memory_format)
    y = torch.randint(0, num_classes, (batch_size,), device=device)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp)
    scaler = torch.amp.GradScaler(device.type, enabled=amp == "fp16")

    def step():
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            loss = torch.nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

    for _ in range(warmup):  # allocator, cuDNN autotuning, lazy inits
        step()
    _sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    seconds = time.perf_counter() - start
    params = count_params(model) / 1e6
    setting = f"{name} k={kwargs.get('kernel_num', '-')} ({params:.1f}M params), {amp}"
    return _row("train step", setting, batch_size, img_size, steps, seconds)


def data_rate(fmt: str, root: str | None, *, workers: int, batch_size: int, img_size: int, batches: int,
              strict: bool = False, label: str | None = None) -> dict:
    from torch.utils.data import DataLoader

    from train.datasets import build_datasets
    from train.transforms import build_transforms

    train_tf, _ = build_transforms(img_size)
    train = build_datasets(root, fmt, train_transform=train_tf, strict=strict).train
    shuffle = not isinstance(train, torch.utils.data.IterableDataset)
    loader = DataLoader(train, batch_size=batch_size, shuffle=shuffle, num_workers=workers, drop_last=True,
                        generator=torch.Generator().manual_seed(0) if shuffle else None)
    it = iter(loader)
    next(it)  # worker start-up is paid once per epoch, not per batch: keep it out of the rate
    start = time.perf_counter()
    done = 0
    for done in range(1, batches + 1):
        try:
            next(it)
        except StopIteration:  # dataset smaller than the requested batches: rate over what there was
            done -= 1
            break
    seconds = time.perf_counter() - start
    del it
    return _row("data pipeline", f"{label or fmt}, {workers} workers", batch_size, img_size, done, seconds)


def synthetic_imagenet(root: Path, classes: int = 4, per_class: int = 40, seed: int = 0) -> Path:
    """ImageNet-sized JPEGs (500x375, quality 90, smooth colour fields plus noise) in the folder layout, so the
    decode + resize cost is measured where no ImageNet copy is at hand. Natural photos decode at a similar rate."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    for split in ("train", "val"):
        for c in range(classes):
            folder = root / split / f"class{c}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                coarse = Image.fromarray(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)).resize((500, 375),
                                                                                                   Image.BICUBIC)
                noisy = np.asarray(coarse, dtype=np.int16) + rng.integers(-12, 13, (375, 500, 3))
                Image.fromarray(noisy.clip(0, 255).astype(np.uint8)).save(folder / f"{i}.JPEG", quality=90)
    return root


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _row(what: str, setting: str, batch: int, img: int, batches: int, seconds: float) -> dict:
    rate = batch * batches / seconds if seconds > 0 and batches else 0.0
    return dict(what=what, setting=setting, batch=batch, img=img, batches=batches,
                images_per_s=rate, ms_per_batch=1000 * seconds / max(batches, 1))


def format_table(rows: list[dict]) -> str:
    header = "| what | setting | batch | img | batches | images/s | ms/batch |\n|---|---|---|---|---|---|---|\n"
    return header + "".join(
        f"| {r['what']} | {r['setting']} | {r['batch']} | {r['img']} | {r['batches']} | {r['images_per_s']:.1f} | "
        f"{r['ms_per_batch']:.1f} |\n" for r in rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["od_resnet18:1", "static_resnet18"],
                        help="NAME or NAME:KERNEL_NUM; 'none' skips the training step")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--steps", type=int, default=5, help="timed training steps per model")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--amp", choices=["none", "bf16", "fp16"], default="none")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--data", choices=["none", "demo", "folder", "wds", "synthetic"], default="demo",
                        help="synthetic: ImageNet-sized JPEGs written to --data-root (default: a temporary folder)")
    parser.add_argument("--data-root", default=None, help="dataset root (folder/wds; demo: its cache folder)")
    parser.add_argument("--data-img-size", type=int, default=None, help="default: --img-size")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--data-batches", type=int, default=20, help="timed batches per worker setting")
    args = parser.parse_args(argv)
    for key in ("batch_size", "img_size", "steps", "data_batches"):
        if getattr(args, key) <= 0:
            parser.error(f"--{key.replace('_', '-')} must be positive, got {getattr(args, key)}")

    try:
        rows = run(args)
    except (ValueError, FileNotFoundError) as err:  # bad model name, kernel number or data root
        print(f"error: {err}", file=sys.stderr)
        return 2
    print()
    print(format_table(rows), end="")
    return 0


def run(args: argparse.Namespace) -> list[dict]:
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    # The load average goes with the numbers: on a shared machine other jobs take cores from the benchmark.
    print(f"# torch {torch.__version__}, {device}, {torch.get_num_threads()} threads, {os.cpu_count()} cpus, "
          f"{platform.machine()}, load average {os.getloadavg()[0]:.1f}", flush=True)
    rows = []
    if args.models != ["none"]:
        for spec in args.models:
            rows.append(train_step_rate(spec, batch_size=args.batch_size, img_size=args.img_size, steps=args.steps,
                                        warmup=args.warmup, device=device, amp=args.amp,
                                        channels_last=args.channels_last))
            print(format_table(rows[-1:]).splitlines()[-1], flush=True)
    if args.data != "none":
        fmt, root, made = args.data, args.data_root, None
        if fmt == "synthetic":
            import tempfile

            made = None if args.data_root else Path(tempfile.mkdtemp(prefix="odconv-bench-"))
            root, fmt = synthetic_imagenet(Path(args.data_root) if args.data_root else made), "folder"
        try:
            for workers in args.workers:
                rows.append(data_rate(fmt, root, workers=workers, batch_size=args.batch_size,
                                      img_size=args.data_img_size or args.img_size, batches=args.data_batches,
                                      label=args.data))
                print(format_table(rows[-1:]).splitlines()[-1], flush=True)
        finally:
            if made is not None:
                shutil.rmtree(made, ignore_errors=True)
    return rows


if __name__ == "__main__":
    sys.exit(main())
