"""An image's metadata blocks, verbatim: taken from a source's bytes, written back into a PNG.

Pure bytes in, bytes out (no file system). A *block* is ``(kind, data)``:

======== ================================================================= ==============================
kind     data (kept byte for byte)                                         taken from
======== ================================================================= ==============================
exif     the EXIF TIFF stream (starts ``II*\\0`` or ``MM\\0*``), without   JPEG APP1 ``Exif\\0\\0``, PNG
         a ``Exif\\0\\0`` prefix                                            ``eXIf``, WebP ``EXIF``
icc      the ICC profile (JPEG APP2 pieces reassembled, PNG ``iCCP``        JPEG APP2, PNG, TIFF 34675,
         decompressed)                                                     WebP ``ICCP``
xmp      the XMP packet (UTF-8 XML)                                        JPEG APP1 (Adobe XMP), TIFF
                                                                           700, WebP ``XMP``
iptc     IPTC-IIM datasets (a JPEG APP13's Photoshop resource 0x0404)       JPEG APP13, TIFF 33723
tEXt     a PNG chunk's data (keyword, text; also zTXt, iTXt, and the       PNG
…        colour chunks gAMA, cHRM, sRGB, cICP)
======== ================================================================= ==============================

A PNG's XMP is an ``iTXt`` chunk and stays one (byte for byte). :func:`write_png` puts every block
back into a PNG after ``IHDR``: ``icc`` as ``iCCP``, ``exif`` as ``eXIf`` with its orientation tag
set to 1 (the pixels are already oriented; nothing else in it changes), ``xmp`` as ``iTXt``
``XML:com.adobe.xmp``, ``iptc`` as a ``zTXt`` ``Raw profile type iptc`` (the convention of
ImageMagick and ExifTool), and PNG chunks as they were.

What is kept per image is bounded (:data:`DEFAULT_LIMIT`, 1 MB): blocks are kept whole in the
order icc, exif, xmp, iptc, colour chunks, text chunks while they fit; the kinds of those left out
are returned (:attr:`Extracted.cut`) so that the caller names the image, never silently.
"""

from __future__ import annotations

import io
import struct
import zlib
from typing import NamedTuple

DEFAULT_LIMIT = 1_000_000  # bytes of metadata blocks kept per image

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
COLOUR_CHUNKS = ("gAMA", "cHRM", "sRGB", "cICP")
TEXT_CHUNKS = ("tEXt", "zTXt", "iTXt")
KINDS = ("exif", "icc", "xmp", "iptc", *COLOUR_CHUNKS, *TEXT_CHUNKS)
PRIORITY = ("icc", "exif", "xmp", "iptc", *COLOUR_CHUNKS, *TEXT_CHUNKS)
COLOUR_KINDS = ("icc", *COLOUR_CHUNKS)  # describe the pixels as stored: dropped when their colours are converted

_EXIF_HEADER = b"Exif\x00\x00"
_XMP_HEADER = b"http://ns.adobe.com/xap/1.0/\x00"
_ICC_HEADER = b"ICC_PROFILE\x00"
_PHOTOSHOP_HEADER = b"Photoshop 3.0\x00"
_ORIENTATION = 0x0112

Block = tuple[str, bytes]


class Extracted(NamedTuple):
    """The blocks kept (source order) and the kinds left out by the size bound (empty: nothing cut)."""

    blocks: tuple[Block, ...]
    cut: tuple[str, ...] = ()


# --------------------------------------------------------------------------- reading


def _png_chunks(data: bytes):
    """``(type, data)`` of every chunk of a PNG (stops at IEND or at a truncated chunk)."""
    pos = len(PNG_SIGNATURE)
    while pos + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        body = data[pos + 8 : pos + 8 + length]
        if len(body) != length:
            return
        yield kind.decode("latin-1"), body
        if kind == b"IEND":
            return
        pos += 12 + length


def _from_png(data: bytes) -> list[Block]:
    blocks: list[Block] = []
    for kind, body in _png_chunks(data):
        if kind == "eXIf":
            blocks.append(("exif", body))
        elif kind == "iCCP":
            name_end = body.find(b"\x00")
            try:
                blocks.append(("icc", zlib.decompress(body[name_end + 2 :])))
            except zlib.error:
                continue  # a damaged profile: Pillow ignores it too
        elif kind in COLOUR_CHUNKS or kind in TEXT_CHUNKS:
            blocks.append((kind, body))
    return blocks


def _irb_iptc(irb: bytes) -> bytes | None:
    """The IPTC-IIM resource (0x0404) of a Photoshop image-resource block."""
    pos = 0
    while pos + 12 <= len(irb) and irb[pos : pos + 4] == b"8BIM":
        (rid,) = struct.unpack(">H", irb[pos + 4 : pos + 6])
        name_len = irb[pos + 6]
        pos += 6 + ((name_len + 2) & ~1)  # the Pascal name, padded to an even size
        if pos + 4 > len(irb):
            return None
        (size,) = struct.unpack(">I", irb[pos : pos + 4])
        body = irb[pos + 4 : pos + 4 + size]
        if rid == 0x0404:
            return body
        pos += 4 + size + (size & 1)
    return None


def _from_jpeg(data: bytes) -> list[Block]:
    blocks: list[Block] = []
    icc: dict[int, bytes] = {}
    icc_at = None
    pos = 2
    while pos + 4 <= len(data) and data[pos] == 0xFF:
        marker = data[pos + 1]
        if marker == 0xFF:
            pos += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            pos += 2
            continue
        if marker in (0xDA, 0xD9):  # start of scan, end of image: no more headers
            break
        (length,) = struct.unpack(">H", data[pos + 2 : pos + 4])
        body = data[pos + 4 : pos + 2 + length]
        if marker == 0xE1 and body.startswith(_EXIF_HEADER):
            blocks.append(("exif", body[len(_EXIF_HEADER) :]))
        elif marker == 0xE1 and body.startswith(_XMP_HEADER):
            blocks.append(("xmp", body[len(_XMP_HEADER) :]))
        elif marker == 0xE2 and body.startswith(_ICC_HEADER) and len(body) >= 14:
            icc.setdefault(body[12], body[14:])
            if icc_at is None:
                icc_at = len(blocks)
                blocks.append(("icc", b""))
        elif marker == 0xED and body.startswith(_PHOTOSHOP_HEADER):
            iptc = _irb_iptc(body[len(_PHOTOSHOP_HEADER) :])
            if iptc:
                blocks.append(("iptc", iptc))
        pos += 2 + length
    if icc_at is not None:
        blocks[icc_at] = ("icc", b"".join(icc[k] for k in sorted(icc)))
    return blocks


def _from_pillow(data: bytes) -> list[Block]:
    """TIFF and WebP: the blocks Pillow exposes (ICC, XMP, EXIF for WebP, IPTC for TIFF)."""
    from PIL import Image

    blocks: list[Block] = []
    try:
        with Image.open(io.BytesIO(data)) as img:
            info = img.info
            if img.format == "WEBP" and info.get("exif"):
                exif = bytes(info["exif"])
                blocks.append(("exif", exif[len(_EXIF_HEADER) :] if exif.startswith(_EXIF_HEADER) else exif))
            if info.get("icc_profile"):
                blocks.append(("icc", bytes(info["icc_profile"])))
            xmp = info.get("xmp") or (img.tag_v2.get(700) if img.format == "TIFF" else None)  # type: ignore[attr-defined]
            if xmp:
                blocks.append(("xmp", xmp.encode() if isinstance(xmp, str) else bytes(xmp)))
            iptc = img.tag_v2.get(33723) if img.format == "TIFF" else None  # type: ignore[attr-defined]
            if iptc:
                blocks.append(("iptc", iptc if isinstance(iptc, bytes) else bytes(iptc)))
    except Exception:  # not an image Pillow reads: imageio refuses it with the reason
        return []
    return blocks


def image_format(data: bytes) -> str:
    """``PNG``, ``JPEG``, ``TIFF``, ``WEBP`` by the magic bytes, else ``""``."""
    if data.startswith(PNG_SIGNATURE):
        return "PNG"
    if data.startswith(b"\xff\xd8"):
        return "JPEG"
    if data[:4] in (b"II*\x00", b"MM\x00*"):
        return "TIFF"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    return ""


def blocks_of(data: bytes) -> list[Block]:
    """Every metadata block of an image's bytes, in source order (no bound)."""
    fmt = image_format(data)
    if fmt == "PNG":
        return _from_png(data)
    if fmt == "JPEG":
        return _from_jpeg(data)
    if fmt in ("TIFF", "WEBP"):
        return _from_pillow(data)
    return []


def without_pixels(stream) -> bytes:
    """An image's bytes without its pixel data, read from a seekable binary file object at its
    start: a PNG's chunks with every ``IDAT``'s data left out (its length set to 0), a JPEG's
    markers up to and including its first start of scan; other formats whole. It holds what
    :func:`blocks_of` and :func:`oml.imageio.describe` read, so a source whose pixels are streamed
    band by band is never held whole in memory for its metadata."""
    head = stream.read(8)
    if head == PNG_SIGNATURE:
        out = [head]
        while True:
            hdr = stream.read(8)
            if len(hdr) < 8:
                break
            length, kind = struct.unpack(">I4s", hdr)
            if kind == b"IDAT":
                out.append(struct.pack(">I", 0) + kind + struct.pack(">I", zlib.crc32(kind)))
                stream.seek(length + 4, 1)  # the data and its CRC
                continue
            body = stream.read(length + 4)
            out.append(hdr + body)
            if kind == b"IEND" or len(body) < length + 4:
                break
        return b"".join(out)
    if head.startswith(b"\xff\xd8"):
        data, pos = bytearray(head), 2
        while True:
            while len(data) < pos + 4:
                more = stream.read(1 << 16)
                if not more:
                    return bytes(data)
                data += more
            if data[pos] != 0xFF:
                return bytes(data)
            marker = data[pos + 1]
            if marker == 0xFF or marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
                pos += 1 if marker == 0xFF else 2
                continue
            if marker == 0xD9:
                return bytes(data[: pos + 2])
            pos += 2 + struct.unpack(">H", data[pos + 2 : pos + 4])[0]
            if marker == 0xDA:  # start of scan: the entropy-coded pixels follow
                while len(data) < pos:
                    more = stream.read(pos - len(data))
                    if not more:
                        break
                    data += more
                return bytes(data[:pos])
    return head + stream.read()


def bound(blocks: list[Block] | tuple[Block, ...], limit: int = DEFAULT_LIMIT) -> Extracted:
    """Keep whole blocks, in :data:`PRIORITY` order, while their total stays within ``limit`` bytes."""
    order = sorted(range(len(blocks)), key=lambda i: (PRIORITY.index(blocks[i][0]) if blocks[i][0] in PRIORITY else len(PRIORITY), i))
    kept, cut, total = set(), [], 0
    for i in order:
        size = len(blocks[i][1])
        if total + size <= limit:
            kept.add(i)
            total += size
        else:
            cut.append(blocks[i][0])
    return Extracted(tuple(b for i, b in enumerate(blocks) if i in kept), tuple(dict.fromkeys(cut)))


def extract(data: bytes, limit: int = DEFAULT_LIMIT, colours_converted: bool = False) -> Extracted:
    """The metadata blocks of an image's bytes, bounded to ``limit`` bytes. With
    ``colours_converted`` (its pixels were converted to sRGB) the blocks that describe the stored
    colours (:data:`COLOUR_KINDS`) are left out: they no longer apply."""
    blocks = [b for b in blocks_of(data) if not (colours_converted and b[0] in COLOUR_KINDS)]
    return bound(blocks, limit)


# --------------------------------------------------------------------------- EXIF orientation


def exif_orientation(exif: bytes) -> int | None:
    """The orientation tag of IFD0 of an EXIF TIFF stream, or ``None``."""
    at = _orientation_at(exif)
    if at is None:
        return None
    order = "<" if exif[:2] == b"II" else ">"
    return struct.unpack(order + "H", exif[at : at + 2])[0]


def _orientation_at(exif: bytes) -> int | None:
    """Offset of the orientation value (a SHORT in the entry's value field) in IFD0, or ``None``."""
    if len(exif) < 8 or exif[:2] not in (b"II", b"MM"):
        return None
    order = "<" if exif[:2] == b"II" else ">"
    (ifd,) = struct.unpack(order + "I", exif[4:8])
    if ifd + 2 > len(exif):
        return None
    (count,) = struct.unpack(order + "H", exif[ifd : ifd + 2])
    for k in range(count):
        entry = ifd + 2 + 12 * k
        if entry + 12 > len(exif):
            return None
        tag, kind, n = struct.unpack(order + "HHI", exif[entry : entry + 8])
        if tag == _ORIENTATION:
            return entry + 8 if kind == 3 and n == 1 else None
    return None


def upright_exif(exif: bytes) -> bytes:
    """``exif`` with its orientation tag set to 1 (two bytes changed; unchanged when it has none)."""
    at = _orientation_at(exif)
    if at is None:
        return exif
    order = "<" if exif[:2] == b"II" else ">"
    return exif[:at] + struct.pack(order + "H", 1) + exif[at + 2 :]


# --------------------------------------------------------------------------- writing


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _iptc_text(iptc: bytes) -> bytes:
    """A ``Raw profile type iptc`` zTXt chunk's data (ImageMagick's form: name, length, hex lines)."""
    hexed = iptc.hex()
    lines = "\n".join(hexed[i : i + 72] for i in range(0, len(hexed), 72))
    text = f"\niptc\n{len(iptc):8d}\n{lines}\n".encode()
    return b"Raw profile type iptc\x00\x00" + zlib.compress(text)


def iptc_from_png_text(body: bytes) -> bytes | None:
    """The IPTC bytes of a ``Raw profile type iptc`` zTXt chunk written by :func:`_iptc_text`."""
    prefix = b"Raw profile type iptc\x00\x00"
    if not body.startswith(prefix):
        return None
    lines = zlib.decompress(body[len(prefix) :]).decode().split("\n")
    return bytes.fromhex("".join(lines[3:]))


def is_rgb_profile(icc: bytes) -> bool:
    """Whether an ICC profile's data colour space (header bytes 16–19) is RGB: the only kind a
    PNG of RGB pixels may carry."""
    return icc[16:20] == b"RGB "


def png_chunks(blocks: tuple[Block, ...] | list[Block]) -> bytes:
    """The PNG chunks that carry ``blocks`` (see the module's doc), colour chunks first. An ICC
    profile that is not for RGB pixels (a grey one) is not written: an RGB PNG cannot carry it."""
    colour, exif, text = [], [], []
    for kind, data in blocks:
        if kind == "icc":
            if is_rgb_profile(data):
                colour.append(png_chunk(b"iCCP", b"ICC Profile\x00\x00" + zlib.compress(data)))
        elif kind in COLOUR_CHUNKS:
            colour.append(png_chunk(kind.encode(), data))
        elif kind == "exif":
            exif.append(png_chunk(b"eXIf", upright_exif(data)))
        elif kind == "xmp":
            text.append(png_chunk(b"iTXt", b"XML:com.adobe.xmp\x00\x00\x00\x00\x00" + data))
        elif kind == "iptc":
            text.append(png_chunk(b"zTXt", _iptc_text(data)))
        elif kind in TEXT_CHUNKS:
            text.append(png_chunk(kind.encode(), data))
    return b"".join(colour + exif[:1] + text)


def write_png(png: bytes, blocks: tuple[Block, ...] | list[Block]) -> bytes:
    """``png`` (as :func:`oml.imageio.encode_png` writes it: no metadata) with ``blocks`` inserted after its IHDR."""
    if not blocks:
        return png
    if not png.startswith(PNG_SIGNATURE) or png[12:16] != b"IHDR":
        raise ValueError("not a PNG starting with IHDR")
    end = len(PNG_SIGNATURE) + 12 + struct.unpack(">I", png[8:12])[0]
    return png[:end] + png_chunks(blocks) + png[end:]


def summary(blocks: tuple[Block, ...] | list[Block]) -> str:
    """One line: each block's kind (a PNG text chunk's keyword) and size."""
    parts = []
    for kind, data in blocks:
        label = kind
        if kind in TEXT_CHUNKS:
            label += " " + data.split(b"\x00", 1)[0].decode("latin-1")
        elif kind == "exif":
            label += f" (orientation {exif_orientation(data) or 'none'})"
        parts.append(f"{label}: {len(data)} bytes")
    return "; ".join(parts) if parts else "none"


def canonical(blocks: tuple[Block, ...] | list[Block]) -> list[Block]:
    """Blocks as a restored PNG carries them, to compare a source's with its restored file's: an
    ``iTXt`` ``XML:com.adobe.xmp`` (uncompressed) is ``xmp``, a ``Raw profile type iptc`` ``zTXt``
    is ``iptc``, EXIF has orientation 1, and a profile an RGB PNG cannot carry is left out."""
    out: list[Block] = []
    xmp_prefix = b"XML:com.adobe.xmp\x00\x00\x00\x00\x00"
    for kind, data in blocks:
        if kind == "iTXt" and data.startswith(xmp_prefix):
            out.append(("xmp", data[len(xmp_prefix) :]))
        elif kind == "zTXt" and iptc_from_png_text(data) is not None:
            out.append(("iptc", iptc_from_png_text(data)))
        elif kind == "exif":
            out.append(("exif", upright_exif(data)))
        elif kind == "icc" and not is_rgb_profile(data):
            continue
        else:
            out.append((kind, data))
    return sorted(out, key=lambda b: (PRIORITY.index(b[0]) if b[0] in PRIORITY else len(PRIORITY), b[1]))


def source_of(
    data: bytes, name: str, mtime: float | None, to_srgb: bool = False, limit: int | None = None, size: int | None = None, sha256: bytes | None = None
):
    """The ``.oml`` source section (:class:`oml.codec.Source`) of an image's bytes: its name,
    size, SHA-256, modification time, format, declared depth and sample format, and its metadata
    blocks within ``limit`` bytes (default :data:`DEFAULT_LIMIT`); the blocks describing its
    colours are left out when ``to_srgb`` converts them. ``data`` may be :func:`without_pixels`'s
    bytes, with the whole file's ``size`` and ``sha256`` given."""
    import hashlib

    from oml.codec import Source
    from oml.imageio import describe

    info = describe(data, to_srgb)
    kept = extract(data, DEFAULT_LIMIT if limit is None else limit, colours_converted=info.converted)
    size = len(data) if size is None else size
    sha256 = hashlib.sha256(data).digest() if sha256 is None else sha256
    return Source(name, size, sha256, mtime, info.format, info.bits, info.sample_format, kept.blocks, kept.cut)
