"""Image decoding shared by the folder and WebDataset readers: unreadable files are counted, or fatal in strict mode."""
from __future__ import annotations

import io
import logging
from pathlib import Path

import torch
from PIL import Image

_logger = logging.getLogger(__name__)

# What PIL raises for unreadable bytes: UnidentifiedImageError and "image file is truncated" are OSErrors, some broken
# PNG chunks raise SyntaxError, bad headers ValueError, oversized images DecompressionBombError.
DECODE_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)

# One counter slot per DataLoader worker (slot 0 is the main process): each slot has a single writer, so the shared
# counts need no lock. More workers than slots would share slots and could lose a count, never crash.
_SLOTS = 256


class CorruptImageError(RuntimeError):
    """An image file could not be decoded while data.strict is set."""


def decode_image(source: str | Path | bytes, mode: str = "RGB") -> Image.Image:
    """Fully decodes an image from a path or bytes (PIL's open() is lazy, so convert() is what surfaces truncation)."""
    if isinstance(source, (bytes, bytearray)):
        with io.BytesIO(source) as f, Image.open(f) as img:
            return img.convert(mode)
    with Image.open(source) as img:
        return img.convert(mode)


class SkipCounter:
    """Counts unreadable samples across DataLoader worker processes (shared memory works with fork and spawn)."""

    def __init__(self):
        self._counts = torch.zeros(_SLOTS, dtype=torch.int64).share_memory_()
        self._warned: set[str] = set()

    def add(self, what: str, err: BaseException) -> None:
        info = torch.utils.data.get_worker_info()
        slot = 0 if info is None else 1 + info.id % (_SLOTS - 1)
        self._counts[slot] += 1
        if what not in self._warned:  # one warning per file and process, not one per epoch
            self._warned.add(what)
            _logger.warning("Skipped unreadable image %s (%s: %s)", what, type(err).__name__, err)

    @property
    def total(self) -> int:
        return int(self._counts.sum())


def handle_bad_image(what: str, err: BaseException, strict: bool, counter: SkipCounter) -> None:
    """Raises in strict mode (naming the file), otherwise counts the skip."""
    if strict:
        raise CorruptImageError(
            f"Cannot decode image {what} ({type(err).__name__}: {err}); remove or replace the file, "
            "or set data.strict=false to skip unreadable images.") from err
    counter.add(what, err)
