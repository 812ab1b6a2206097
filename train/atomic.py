"""Write-then-rename: a reader (or a resumed run) sees the old file or the new one, never half of one.

Standard library only and free of project imports, so that `detection/` can use it without pulling in the
training stack (train/__init__.py imports nothing).

    with atomic_write(run_dir / "summary.json", "w") as f:
        f.write(text)
    with atomic_directory(root) as tmp:   # fill tmp; it becomes root in one rename
        ...
    atomic_link(run_dir / "last.pt", run_dir / "best.pt")  # a second name for the same bytes, swapped in at once
"""
from __future__ import annotations

import os
import shutil
import tempfile
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Iterator


@contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w", *, fsync: bool = True, **open_kwargs) -> Iterator[IO]:
    """Open a temporary file next to `path` (same filesystem, so the rename is atomic); on a clean exit flush,
    fsync (a power cut after the rename must not leave an empty file) and rename it over `path`. On an exception
    (or a signal that raises) the temporary file is removed and `path` is left as it was.

    `mode` is "w" or "wb"; `open_kwargs` go to open() (e.g. encoding). The parent directory is created."""
    if mode not in ("w", "wb"):
        raise ValueError(f"mode must be 'w' or 'wb', got {mode!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Unique per process and thread; a plain open() keeps the umask's permissions (mkstemp would make it 0600).
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{threading.get_ident()}.tmp")
    try:
        with open(tmp, mode, **open_kwargs) as f:
            yield f
            f.flush()
            if fsync:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_link(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Make `dst` name the same file as `src` (a hard link), replacing any old `dst` in one rename.

    Used for the checkpoints that hold the same state as one just written (best.pt and epoch_XXXX.pt beside
    last.pt): one copy on disk instead of three. A later atomic_write to `src` replaces src's name with a new
    file and leaves `dst` on the old one, so the link never changes under a reader. Where the filesystem has
    no hard links the bytes are copied to a temporary sibling, fsynced, and renamed in the same way."""
    src, dst = Path(src), Path(dst)
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}-{threading.get_ident()}.tmp")
    tmp.unlink(missing_ok=True)
    try:
        try:
            os.link(src, tmp)
        except OSError:  # no hard links here (some network and FUSE filesystems): a full copy
            with open(src, "rb") as fin, open(tmp, "wb") as fout:
                shutil.copyfileobj(fin, fout)
                fout.flush()
                os.fsync(fout.fileno())
        os.replace(tmp, dst)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextmanager
def atomic_directory(path: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty temporary sibling directory of `path`; on a clean exit rename it to `path`.

    `path` may exist only as an empty directory (it is replaced). When another process renamed its own copy into
    place first, that copy is kept and ours is dropped without an error: the caller checks that what is there is
    whole (e.g. by a marker file written last). The temporary directory never outlives the block."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        yield tmp
        if path.is_dir() and not any(path.iterdir()):
            path.rmdir()  # rename cannot replace a directory otherwise
        try:
            tmp.rename(path)
        except OSError:
            if not path.exists():  # not a lost race: a real failure
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
