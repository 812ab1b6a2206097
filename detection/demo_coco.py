"""A small COCO-format detection/instance-segmentation set made locally (no download): scikit-learn's handwritten
digits (8x8 scans of real handwriting) scaled and pasted onto larger noisy canvases, one category per digit.

    python -m detection.demo_coco                      # writes data/demo_coco/{train,val}/*.png + annotations/*.json

Boxes are tight around each digit's mask; masks are compressed COCO RLE. Train and val use disjoint digit scans.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from train.atomic import atomic_write  # stdlib only: no training stack is imported

CLASSES = tuple(str(d) for d in range(10))
DEFAULT_ROOT = "data/demo_coco"


def _paste_digit(canvas: np.ndarray, occupied: np.ndarray, digit: np.ndarray, rng: np.random.Generator):
    """Paste one upscaled digit at a free spot; returns its binary mask, or None when no free spot was found."""
    h, w = occupied.shape
    size = int(rng.integers(h // 6, h // 3 + 1))
    # Bilinear upscaling keeps the pen strokes' soft edges; intensity 0..16 becomes opacity 0..1.
    alpha = np.asarray(Image.fromarray((digit * 255 / 16).astype(np.uint8)).resize((size, size), Image.BILINEAR))
    alpha = alpha.astype(np.float32) / 255.0
    for _ in range(20):
        y, x = int(rng.integers(0, h - size + 1)), int(rng.integers(0, w - size + 1))
        if not occupied[y : y + size, x : x + size].any():
            break
    else:
        return None
    occupied[y : y + size, x : x + size] = True
    color = rng.uniform(0.55, 1.0, size=3).astype(np.float32)
    region = canvas[y : y + size, x : x + size]
    region[:] = region * (1 - alpha[..., None]) + color * alpha[..., None]
    mask = np.zeros((h, w), dtype=np.uint8)
    mask[y : y + size, x : x + size] = alpha > 0.5
    return mask if mask.any() else None


def _make_split(
    out: Path, split: str, digits: np.ndarray, labels: np.ndarray, num_images: int, size: int, seed: int
) -> dict:
    rng = np.random.default_rng(seed)
    (out / split).mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for image_id in range(1, num_images + 1):
        # A dim, smooth background with noise, so the detector cannot just threshold brightness.
        base = rng.uniform(0.0, 0.35, size=3).astype(np.float32)
        canvas = np.clip(base + rng.normal(0, 0.06, size=(size, size, 3)).astype(np.float32), 0, 1)
        occupied = np.zeros((size, size), dtype=bool)
        for _ in range(int(rng.integers(1, 5))):
            k = int(rng.integers(len(digits)))
            mask = _paste_digit(canvas, occupied, digits[k], rng)
            if mask is None:
                continue
            rle = mask_utils.encode(np.asfortranarray(mask))
            x, y, w, h = (float(v) for v in mask_utils.toBbox(rle))
            rle["counts"] = rle["counts"].decode("ascii")
            annotations.append(dict(
                id=len(annotations) + 1, image_id=image_id, category_id=int(labels[k]) + 1, bbox=[x, y, w, h],
                area=float(mask.sum()), segmentation=rle, iscrowd=0,
            ))
        file_name = f"{image_id:05d}.png"
        Image.fromarray((canvas * 255).round().astype(np.uint8)).save(out / split / file_name)
        images.append(dict(id=image_id, file_name=file_name, width=size, height=size))
    categories = [dict(id=i + 1, name=name, supercategory="digit") for i, name in enumerate(CLASSES)]
    return dict(images=images, annotations=annotations, categories=categories,
                info=dict(description="ODConv demo COCO: scikit-learn digits on canvases"))


def _write_json(obj: dict, path: Path) -> None:
    with atomic_write(path) as f:  # a reader never sees half a file
        f.write(json.dumps(obj))


def make_demo_coco(root: str = DEFAULT_ROOT, num_train: int = 400, num_val: int = 100, size: int = 64,
                   seed: int = 0) -> Path:
    """Write the demo set under `root` (deterministic for a given seed) and return `root`."""
    from sklearn.datasets import load_digits  # bundled with scikit-learn, no download

    if num_train < 1 or num_val < 1:
        raise ValueError(f"num_train and num_val must be >= 1, got {num_train} and {num_val}")
    if size < 32:
        raise ValueError(f"size must be >= 32 pixels so digits fit, got {size}")
    digits = load_digits()
    # Disjoint scans for train and val: val measures reading new handwriting, not recalling pasted copies.
    cut = int(0.75 * len(digits.images))
    out = Path(root)
    (out / "annotations").mkdir(parents=True, exist_ok=True)
    for split, sl, n, s in (("train", slice(0, cut), num_train, seed), ("val", slice(cut, None), num_val, seed + 1)):
        coco = _make_split(out, split, digits.images[sl], digits.target[sl], n, size, s)
        _write_json(coco, out / "annotations" / f"{split}.json")
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=DEFAULT_ROOT, help="output directory (default: %(default)s)")
    parser.add_argument("--train", type=int, default=400, help="number of training images")
    parser.add_argument("--val", type=int, default=100, help="number of validation images")
    parser.add_argument("--size", type=int, default=64, help="canvas side in pixels")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    out = make_demo_coco(args.out, args.train, args.val, args.size, args.seed)
    print(f"demo COCO written to {out} ({args.train} train, {args.val} val images, {len(CLASSES)} classes)")


if __name__ == "__main__":
    main()
