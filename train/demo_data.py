"""The embedded demo dataset: scikit-learn's bundled digits written once as an ImageNet-style image folder.

The demo run must exercise exactly the code path an ImageNet run takes (folder scan, PNG decode, timm transforms), so
the 1,797 8x8 digits that ship inside scikit-learn are written to disk as `root/{train,val}/<digit>/<index>.png`.
Nothing is downloaded. Choices:
- images are upscaled to 32x32 with bilinear resampling and stored as RGB: ResNet and MobileNetV2 stems downsample by
  4 before the first stage and by 32 overall, so 8x8 inputs would vanish; 3 identical channels let the zoo's 3-channel
  stems and ImageNet mean/std apply unchanged;
- the split is a stratified 80/20 split with a fixed seed (1,437 train / 360 val images), so every machine and every
  rank writes the same files;
- the folder is built in a temporary sibling directory and renamed into place with a marker file written last, so a
  crash or two ranks preparing it at once never leave a half-written dataset behind.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
from PIL import Image

from .atomic import atomic_directory

DEMO_IMG_SIZE = 32
DEMO_VAL_FRACTION = 0.2
DEMO_SEED = 0
MARKER = ".complete.json"
CACHE_ENV = "ODCONV_CACHE"


def default_demo_root() -> Path:
    """Where the demo dataset lives unless a root is given: $ODCONV_CACHE/digits or ~/.cache/odconv/digits."""
    cache = os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "odconv"
    return Path(cache) / "digits"


def is_prepared(root: Path) -> bool:
    return (Path(root) / MARKER).is_file()


def prepare_demo_dataset(root: Path | str | None = None) -> Path:
    """Writes the digits into `root` (default: `default_demo_root()`) unless already there; returns the root."""
    root = Path(root) if root else default_demo_root()
    if is_prepared(root):
        return root
    if root.exists() and any(root.iterdir()):
        raise FileExistsError(
            f"Demo dataset folder {root} exists but holds no {MARKER} marker; delete it or point data.root elsewhere.")
    with atomic_directory(root) as tmp:
        counts = _write_split_folders(tmp)
        # The marker goes in last: its presence is what says the folder is whole.
        (tmp / MARKER).write_text(json.dumps(dict(version=1, img_size=DEMO_IMG_SIZE, **counts)))
    if not is_prepared(root):  # another process (a second rank) renamed its copy first: it must be whole
        raise FileExistsError(f"Demo dataset folder {root} appeared without its {MARKER} marker while being written; "
                              "delete it and run again.")
    return root


def _write_split_folders(out: Path) -> dict[str, int]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = digits.images  # (1797, 8, 8) floats in 0..16
    labels = digits.target
    indices = np.arange(len(labels))
    train_idx, val_idx = train_test_split(
        indices, test_size=DEMO_VAL_FRACTION, random_state=DEMO_SEED, stratify=labels)
    counts = {}
    for split, idx in (("train", np.sort(train_idx)), ("val", np.sort(val_idx))):
        for i in idx:
            pixels = np.clip(images[i] * (255.0 / 16.0), 0, 255).round().astype(np.uint8)
            img = Image.fromarray(pixels).resize((DEMO_IMG_SIZE, DEMO_IMG_SIZE), Image.BILINEAR)
            class_dir = out / split / str(labels[i])
            class_dir.mkdir(parents=True, exist_ok=True)
            img.convert("RGB").save(class_dir / f"{i:04d}.png")
        counts[split] = len(idx)
    return counts
