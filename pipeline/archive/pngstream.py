"""One PNG file from bands of rows compressed independently, in parallel, and written in order.

A PNG's pixels are one zlib stream. Each band's filtered scanlines are deflated on their own and
ended with a sync flush, which leaves a byte-aligned, non-final run of deflate blocks; such runs
concatenate into one valid stream, closed by an empty final block. The zlib trailer's Adler-32 of
the whole is combined from the bands' own checksums and lengths. So the workers that decode the
bands also do the (slow) compression, and the writer holds one band at a time: a huge image is
restored without any process holding it whole.

Each row is filtered with the PNG filter (None, Sub, Up, Average, Paeth) whose output has the least
sum of absolute values, the usual heuristic; a band's first row cannot see the row above it (that is
another band), so it chooses between None and Sub only.
"""

from __future__ import annotations

import struct
import zlib
from typing import BinaryIO, NamedTuple

import numpy as np

_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_ADLER_BASE = 65521
_CHUNK = 1 << 20  # bytes of deflate data per IDAT chunk


class Band(NamedTuple):
    """A band's deflate blocks (non-final, byte-aligned), the Adler-32 of its filtered scanlines
    (started from 1), and how many bytes those scanlines have."""

    data: bytes
    adler: int
    length: int


def _filtered(rows: np.ndarray, above: np.ndarray | None) -> np.ndarray:
    """``(h, w, 3)`` uint8 → ``(h, 1 + 3w)`` uint8: each row's filter type byte and filtered bytes.
    ``above`` is the row over the first one (``None``: none this band can see)."""
    h, w, c = rows.shape
    x = rows.reshape(h, w * c).astype(np.int16)
    left = np.zeros_like(x)
    left[:, c:] = x[:, :-c]
    up = np.zeros_like(x)
    up[1:] = x[:-1]
    if above is not None:
        up[0] = above.reshape(w * c)
    upleft = np.zeros_like(x)
    upleft[:, c:] = up[:, :-c]
    p = left + up - upleft
    pa, pb, pc = np.abs(p - left), np.abs(p - up), np.abs(p - upleft)
    paeth = np.where((pa <= pb) & (pa <= pc), left, np.where(pb <= pc, up, upleft))
    candidates = np.stack([x, x - left, x - up, x - (left + up) // 2, x - paeth]) & 0xFF  # (5, h, 3w)
    cost = np.where(candidates > 127, 256 - candidates, candidates).sum(axis=2)  # (5, h)
    if above is None:
        cost[2:, 0] = np.iinfo(cost.dtype).max  # the band's first row: its row above is in another band
    kind = cost.argmin(axis=0)
    out = np.empty((h, 1 + w * c), dtype=np.uint8)
    out[:, 0] = kind
    out[:, 1:] = candidates[kind, np.arange(h)]
    return out


def encode_band(pixels: np.ndarray, level: int = 6, rows_at_once: int = 32) -> Band:
    """Compress the rows ``(h, w, 3)`` uint8 of one band (filtered ``rows_at_once`` rows at a time)."""
    deflate = zlib.compressobj(level, zlib.DEFLATED, -15)
    parts, adler, length = [], 1, 0
    for start in range(0, pixels.shape[0], rows_at_once):
        above = pixels[start - 1] if start else None
        raw = _filtered(pixels[start:start + rows_at_once], above).tobytes()
        parts.append(deflate.compress(raw))
        adler, length = zlib.adler32(raw, adler), length + len(raw)
    parts.append(deflate.flush(zlib.Z_SYNC_FLUSH))
    return Band(b"".join(parts), adler, length)


def combine_adler(first: int, second: int, second_length: int) -> int:
    """Adler-32 of ``a + b`` from ``adler32(a)``, ``adler32(b)`` and ``len(b)``."""
    a1, b1 = first & 0xFFFF, first >> 16
    a2, b2 = second & 0xFFFF, second >> 16
    a = (a1 + a2 - 1) % _ADLER_BASE
    b = (b1 + b2 + (second_length % _ADLER_BASE) * (a1 - 1)) % _ADLER_BASE
    return (b << 16) | a


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(data, zlib.crc32(kind)))


class PngWriter:
    """Writes an RGB 8-bit PNG of ``width``×``height`` to ``out`` band by band, top to bottom."""

    def __init__(self, out: BinaryIO, width: int, height: int, chunks: bytes = b"") -> None:
        """``chunks``: whole chunks written after IHDR (the image's metadata, :func:`oml.metadata.png_chunks`)."""
        self.out, self.width, self.height = out, width, height
        self.rows = 0
        self.adler = 1
        out.write(_SIGNATURE + _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)) + chunks)
        self._idat(b"\x78\x9c")  # zlib header: deflate, 32 KiB window

    def _idat(self, data: bytes) -> None:
        for start in range(0, len(data), _CHUNK):
            self.out.write(_chunk(b"IDAT", data[start:start + _CHUNK]))

    def write(self, band: Band) -> None:
        rows, extra = divmod(band.length, 1 + 3 * self.width)
        if extra or self.rows + rows > self.height:
            raise ValueError(f"a band of {band.length} bytes does not fit rows of width {self.width} below row {self.rows} of {self.height}")
        self._idat(band.data)
        self.adler = combine_adler(self.adler, band.adler, band.length)
        self.rows += rows

    def close(self) -> None:
        if self.rows != self.height:
            raise ValueError(f"{self.rows} rows written of {self.height}")
        self._idat(zlib.compressobj(wbits=-15).flush() + struct.pack(">I", self.adler))  # empty final block, checksum
        self.out.write(_chunk(b"IEND", b""))
