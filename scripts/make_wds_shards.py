"""Offline tool: write an ImageNet-style folder as WebDataset tar shards plus the `_info.json` that
`train.wds_data` reads (data.format=wds).

    python scripts/make_wds_shards.py /data/imagenet /data/imagenet-wds --shard-size 1000
"""
from __future__ import annotations

import argparse
import io
import json
import sys
import tarfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `python scripts/make_wds_shards.py` from a checkout

from train.atomic import atomic_write  # noqa: E402
from train.folder_data import ImageFolderDataset  # noqa: E402
from train.wds_data import INFO_FILE  # noqa: E402


def write_wds_shards(folder_root: Path | str, out_dir: Path | str, *, splits: tuple[str, ...] = ("train", "val"),
                     shard_size: int = 1000) -> Path:
    """Writes `folder_root/{split}/CLASS/*` as `out_dir/{split}-NNNNNN.tar` shards plus `_info.json`.

    Image bytes are copied as they are (no re-encoding); samples keep the folder's sorted order, so the training
    stream's shuffling is what mixes classes.
    """
    folder_root, out_dir = Path(folder_root), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    info = dict(name=folder_root.name, splits={})
    class_to_idx = None
    for split in splits:
        ds = ImageFolderDataset(folder_root, split, class_to_idx=class_to_idx)
        class_to_idx = class_to_idx or ds.class_to_idx
        info["num_classes"] = len(class_to_idx)
        filenames, lengths = [], []
        for start in range(0, len(ds), shard_size):
            name = f"{split}-{start // shard_size:06d}.tar"
            indices = range(start, min(start + shard_size, len(ds)))
            with tarfile.open(out_dir / name, "w") as tar:
                for i in indices:
                    path = ds.path(i)
                    key = f"{i:08d}"
                    _add_member(tar, f"{key}{path.suffix.lower().replace('.jpeg', '.jpg')}", path.read_bytes())
                    _add_member(tar, f"{key}.cls", str(int(ds.targets[i])).encode())
            filenames.append(name)
            lengths.append(len(indices))
        info["splits"][split] = dict(name=split, num_samples=len(ds), filenames=filenames, shard_lengths=lengths)
    with atomic_write(out_dir / INFO_FILE, "w") as f:  # written last: a reader sees all the shards it lists
        f.write(json.dumps(info, indent=1))
    return out_dir


def _add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    member = tarfile.TarInfo(name)
    member.size = len(data)
    member.mtime = 0  # reproducible shards: same bytes for the same folder
    tar.addfile(member, io.BytesIO(data))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Convert an ImageNet-style folder into WebDataset shards.")
    parser.add_argument("folder_root")
    parser.add_argument("out_dir")
    parser.add_argument("--splits", nargs="+", default=["train", "val"])
    parser.add_argument("--shard-size", type=int, default=1000)
    args = parser.parse_args(argv)
    print(write_wds_shards(args.folder_root, args.out_dir, splits=tuple(args.splits), shard_size=args.shard_size))


if __name__ == "__main__":
    main()
