"""Image decoding shared by the folder and WebDataset readers: unreadable files are logged, or fatal in strict mode."""
from __future__ import annotations

import io
from pathlib import Path

from PIL import Image

from .skipped import SkipLog

# What PIL raises for unreadable bytes: UnidentifiedImageError and "image file is truncated" are OSErrors, some broken
# PNG chunks raise SyntaxError, bad headers ValueError, oversized images DecompressionBombError.
DECODE_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)


class CorruptImageError(RuntimeError):
    """An image file could not be decoded while data.strict is set."""


def decode_image(source: str | Path | bytes, mode: str = "RGB") -> Image.Image:
    """Fully decodes an image from a path or bytes (PIL's open() is lazy, so convert() is what surfaces truncation)."""
    if isinstance(source, (bytes, bytearray)):
        with io.BytesIO(source) as f, Image.open(f) as img:
            return img.convert(mode)
    with Image.open(source) as img:
        return img.convert(mode)


def handle_bad_image(what: str, err: BaseException, strict: bool, log: SkipLog) -> None:
    """Raises in strict mode (naming the file), otherwise records the skip (reported once per run, see
    `train.skipped`)."""
    if strict:
        raise CorruptImageError(
            f"Cannot decode image {what} ({type(err).__name__}: {err}); remove or replace the file, "
            "or set data.strict=false to skip unreadable images.") from err
    log.add(what, err)
