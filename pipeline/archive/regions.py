"""Read one rectangle of a source image without decoding the rest into memory (pyvips), else ``None``.

With `pyvips <https://libvips.org>`_ installed (``pip install 'oml-archive[regions]'``, which brings
a libvips wheel) a PNG or JPEG source is decoded as a stream, top to bottom, keeping only the rows
the rectangle needs, so a worker's memory is bounded by its unit, not by the image. Only sources
whose pixels are certain to equal :func:`oml.imageio.decode_image`'s take this path: 8-bit
grey, grey+alpha, RGB or RGBA (alpha dropped, grey repeated), palette expanded, no EXIF rotation,
no colour profile but sRGB (libvips leaves the pixels as stored, as the policy does for sRGB).
Anything else (16-bit, CMYK, rotated, colours to convert to sRGB, other formats, no pyvips)
returns ``None`` and the caller decodes the whole image with Pillow, as before.
"""

from __future__ import annotations

import hashlib
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor

from oml import tiling
from oml.imageio import is_srgb_profile
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


class HashingReader:
    """A file object that passes reads and seeks through to ``stream`` and feeds a SHA-256 with
    every byte of the file once, in order, from the very reads its reader makes: a read past the
    bytes hashed so far hashes what is new (a forward jump first hashes the bytes it skips), and
    :meth:`finish` hashes the rest of the file, in pieces. A decoder reading through it therefore
    decodes the bytes hashed, and memory does not grow with the file."""

    CHUNK = 1 << 20

    def __init__(self, stream: Any) -> None:
        self.stream, self.digest, self.hashed = stream, hashlib.sha256(), 0

    def read(self, size: int = -1) -> bytes:
        start = self.stream.tell()
        if start > self.hashed:
            self._hash_up_to(start)
        data = self.stream.read(size)
        if start + len(data) > self.hashed:
            self.digest.update(data[self.hashed - start :])
            self.hashed = start + len(data)
        return data

    def seek(self, offset: int, whence: int = 0) -> int:
        return self.stream.seek(offset, whence)

    def tell(self) -> int:
        return self.stream.tell()

    def _hash_up_to(self, end: int) -> None:
        here = self.stream.tell()
        self.stream.seek(self.hashed)
        while self.hashed < end and (piece := self.stream.read(min(self.CHUNK, end - self.hashed))):
            self.digest.update(piece)
            self.hashed += len(piece)
        self.stream.seek(here)

    def finish(self) -> tuple[int, str]:
        """The file's size and SHA-256 (hex), after hashing the bytes not read yet."""
        self.stream.seek(self.hashed)
        while piece := self.stream.read(self.CHUNK):
            self.digest.update(piece)
            self.hashed += len(piece)
        return self.hashed, self.digest.hexdigest()


class HashedRegion(NamedTuple):
    """A rectangle's pixels and the size and SHA-256 of the whole file they were decoded from."""

    pixels: Tensor
    size: int
    sha256: str


def _open(uri: str, hashed: bool = False) -> tuple[Any, Any, HashingReader | None]:
    """A pyvips source streaming ``uri`` through fsspec, the file object it reads, and (``hashed``)
    the :class:`HashingReader` in between."""
    stream = storage.open_file(uri)
    reader = HashingReader(stream) if hashed else None
    through = reader or stream
    source = pyvips.SourceCustom()
    source.on_read(through.read)
    source.on_seek(lambda offset, whence: through.seek(offset, whence))
    return source, stream, reader


def read_region(uri: str, rect: tiling.Tile, width: int, height: int) -> Tensor | None:
    """The uint8 pixels ``(3, rect.height, rect.width)`` of ``rect`` in the ``width``×``height``
    image at ``uri``, streamed; ``None`` when this source must be decoded whole instead.

    Raises:
        RegionError: the data is corrupt or ends before the rectangle (libvips fails on any warning).
    """
    read = _read_region(uri, rect, width, height, hashed=False)
    return None if read is None else read.pixels


def read_region_hashed(uri: str, rect: tiling.Tile, width: int, height: int) -> HashedRegion | None:
    """:func:`read_region`, and the size and SHA-256 of the whole file, hashed from the reads that
    decode the rectangle and then from the rest of the file (so the pixels come from the bytes
    hashed); ``None`` when this source must be decoded whole instead."""
    return _read_region(uri, rect, width, height, hashed=True)


def _read_region(uri: str, rect: tiling.Tile, width: int, height: int, hashed: bool) -> HashedRegion | None:
    if pyvips is None:
        return None
    with storage.open_file(uri) as head:
        magic = head.read(8)
    if not magic.startswith(_SOURCES):
        return None
    source, stream, reader = _open(uri, hashed)
    try:
        with stream:
            image = pyvips.Image.new_from_source(source, "", access="sequential", fail_on="warning")
            if not _matches_pillow(image, width, height):
                return None
            pixels = _pixels(image, rect)
            size, digest = reader.finish() if reader is not None else (0, "")
            return HashedRegion(pixels, size, digest)
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
        and (image.get_typeof("icc-profile-data") == 0 or is_srgb_profile(image.get("icc-profile-data")))
    )


def _pixels(image: Any, rect: tiling.Tile) -> Tensor:
    colour = image[0] if image.bands in (1, 2) else image.extract_band(0, n=3)
    band = colour.crop(rect.left, rect.top, rect.width, rect.height)
    array = np.ndarray(buffer=band.write_to_memory(), dtype=np.uint8, shape=(rect.height, rect.width, colour.bands))
    if colour.bands == 1:
        array = np.repeat(array, 3, axis=2)
    return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))
