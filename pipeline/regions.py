"""Read one rectangle of a source image without decoding the rest into memory (pyvips), else ``None``.

With `pyvips <https://libvips.org>`_ installed (``pip install 'oml-archive[regions]'``, which brings
a libvips wheel) a PNG or JPEG source is decoded as a stream, top to bottom, keeping only the rows
the rectangle needs, so a worker's memory is bounded by its unit, not by the image. Only sources
whose pixels are certain to equal :func:`oml.imageio.decode_image`'s take this path: 8-bit
grey, grey+alpha, RGB or RGBA (alpha dropped, grey repeated), palette expanded, no EXIF rotation.
Anything else (16-bit, CMYK, rotated, other formats, no pyvips) returns ``None`` and the caller
decodes the whole image with Pillow, as before.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from oml import tiling
from pipeline import storage

try:
    import pyvips
except (ImportError, OSError):  # not installed, or its libvips cannot be loaded
    pyvips = None

_SOURCES = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff")  # the formats whose decoders match Pillow's pixel for pixel
_LOADERS = ("pngload_source", "jpegload_source")


class RegionError(ValueError):
    """The source cannot be decoded (corrupt or truncated); the message says why, in one line."""


def available() -> bool:
    return pyvips is not None


def _open(uri: str) -> tuple[Any, Any]:
    """A pyvips source streaming ``uri`` through fsspec, and the file object it reads."""
    stream = storage.open_file(uri)
    source = pyvips.SourceCustom()
    source.on_read(stream.read)
    source.on_seek(lambda offset, whence: stream.seek(offset, whence))
    return source, stream


def read_region(uri: str, rect: tiling.Tile, width: int, height: int) -> Tensor | None:
    """The uint8 pixels ``(3, rect.height, rect.width)`` of ``rect`` in the ``width``×``height``
    image at ``uri``, streamed; ``None`` when this source must be decoded whole instead.

    Raises:
        RegionError: the data is corrupt or ends before the rectangle (libvips fails on any warning).
    """
    if pyvips is None:
        return None
    with storage.open_file(uri) as head:
        magic = head.read(8)
    if not magic.startswith(_SOURCES):
        return None
    source, stream = _open(uri)
    try:
        with stream:
            image = pyvips.Image.new_from_source(source, "", access="sequential", fail_on="warning")
            if not _matches_pillow(image, width, height):
                return None
            return _pixels(image, rect)
    except pyvips.Error as exc:
        lines = [line for line in str(exc).splitlines() if line.strip()]
        raise RegionError(f"corrupt or truncated image: {lines[-1] if lines else exc}") from None


def _matches_pillow(image: Any, width: int, height: int) -> bool:
    oriented = image.get_typeof("orientation") != 0 and image.get("orientation") not in (0, 1)
    return (
        image.get("vips-loader") in _LOADERS
        and image.format == "uchar"
        and image.bands in (1, 2, 3, 4)
        and image.interpretation in ("b-w", "srgb")
        and (image.width, image.height) == (width, height)
        and not oriented
    )


def _pixels(image: Any, rect: tiling.Tile) -> Tensor:
    colour = image[0] if image.bands in (1, 2) else image.extract_band(0, n=3)
    band = colour.crop(rect.left, rect.top, rect.width, rect.height)
    array = np.ndarray(buffer=band.write_to_memory(), dtype=np.uint8, shape=(rect.height, rect.width, colour.bands))
    if colour.bands == 1:
        array = np.repeat(array, 3, axis=2)
    return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))
