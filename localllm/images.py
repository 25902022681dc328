"""Images for a vision model, read as hostile input: decoded by Pillow within bounds (bytes,
pixels, one frame), turned upright by their EXIF orientation, and handed on as RGB pixels.

Pillow reads the header first, so a decompression bomb (a small file declaring 100000x100000
pixels) is refused before any pixel is decoded; llama.cpp's own loader (stb_image) would allocate
first and ignores EXIF orientation, which is why images do not go to it as files.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from .errors import UsageError
from .printable import printable

MAX_BYTES = 20 * 2**20  # as OpenAI's API takes
MAX_PIXELS = 40_000_000  # declared in the header; past it, refused undecoded
MAX_SIDE = 4096  # decoded images larger than this are scaled down (projectors resize to far less)
DATA_URL = re.compile(r"data:(image/[a-z0-9.+-]+)?(;[a-z0-9=.+-]+)*;base64,", re.IGNORECASE)


class ImageError(UsageError):
    """An image that cannot be used: unreadable, too large, or given where no model can see it."""


@dataclass(frozen=True)
class Picture:
    """An image's upright RGB pixels (width x height x 3 bytes) and a digest that names them."""

    width: int
    height: int
    rgb: bytes
    digest: str


def decode(data: bytes, name: str = "the image") -> Picture:
    if len(data) > MAX_BYTES:
        raise ImageError(f"{name} is {len(data) / 2**20:.1f} MiB: images up to {MAX_BYTES // 2**20} MiB are taken")
    try:
        from PIL import Image, ImageOps
    except ImportError:  # a base dependency; missing only from a broken install
        raise ImageError("reading images needs Pillow: pip install pillow") from None
    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
            if width * height > MAX_PIXELS:
                raise ImageError(f"{name} is {width}x{height} pixels: images up to {MAX_PIXELS // 1_000_000} "
                                 "megapixels are taken")
            image.draft("RGB", (MAX_SIDE, MAX_SIDE))  # JPEG: decode at a reduced size when it is large
            upright = ImageOps.exif_transpose(image)
            if max(upright.size) > MAX_SIDE:
                upright.thumbnail((MAX_SIDE, MAX_SIDE))
            rgb = upright.convert("RGB")
            pixels = rgb.tobytes()
    except ImageError:
        raise
    except Image.DecompressionBombError:
        raise ImageError(f"{name} declares far more than {MAX_PIXELS // 1_000_000} megapixels: images up to that "
                         "are taken (it was not decoded)") from None
    except (OSError, ValueError, SyntaxError, Image.UnidentifiedImageError) as exc:
        first = str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
        raise ImageError(f"{name} is not an image that can be read ({first})") from None
    return Picture(rgb.width, rgb.height, pixels, hashlib.sha256(pixels).hexdigest())


def from_data_url(url: str, name: str = "the image") -> Picture:
    """A `data:image/...;base64,...` URL, as OpenAI's image_url parts carry them."""
    match = DATA_URL.match(url)
    if match is None:
        raise ImageError(f"{name} must be a data: URL with base64 image data")
    return from_base64(url[match.end():], name)


def from_base64(text: str, name: str = "the image") -> Picture:
    if len(text) > MAX_BYTES * 4 // 3 + 4:
        raise ImageError(f"{name} is larger than {MAX_BYTES // 2**20} MiB: images up to that are taken")
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ImageError(f"{name} is not valid base64") from None
    return decode(data, name)


def from_file(path: str) -> Picture:
    """A file, or "-": the image's bytes on standard input."""
    if path == "-":
        data = sys.stdin.buffer.read(MAX_BYTES + 1)
        return decode(data, "the image on standard input")
    file = Path(path)
    try:
        with file.open("rb") as handle:
            data = handle.read(MAX_BYTES + 1)
    except OSError as exc:
        raise ImageError(f"cannot read {path}: {exc.strerror or exc}") from None
    return decode(data, printable(file.name)[:80])
