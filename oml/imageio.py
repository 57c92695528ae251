"""Image bytes ⇄ tensors, with the project's input policy.

Policy (applies to every input format Pillow reads: PNG, JPEG, WebP, TIFF, …):

- EXIF orientation is applied, so the archive stores the image as viewers show it (a PNG's
  ``eXIf`` chunk only before the image data, where a reader of the header finds it).
- Grayscale (``L``, ``I;16``…), palette (``P``), CMYK and other modes are converted
  to 8-bit RGB; grayscale becomes three equal channels.
- Alpha (``RGBA``, ``LA``, ``P`` with transparency) is dropped: only the colour is
  coded. Transparency is not preserved.
- 16-bit inputs are reduced to 8 bits per channel (the codec is 8-bit).
- Images over ``max_pixels`` are refused before decoding (decompression bombs). This limit replaces
  Pillow's own (``Image.MAX_IMAGE_PIXELS``, about 179 Mpixel, which would refuse a 16384² scan
  even when a user raises ``--max-pixels``): importing this module turns Pillow's check off.
"""

from __future__ import annotations

import io
import warnings
from typing import BinaryIO

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch import Tensor

from oml.names import DEFAULT_MAX_PIXELS, IMAGE_SUFFIXES

Image.MAX_IMAGE_PIXELS = None  # max_pixels below is the limit, checked before any pixel is decoded


class ImageDecodeError(ValueError):
    """The bytes are not an image this project can read; the message says why."""


def _to_rgb8(img: Image.Image) -> Image.Image:
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.uint32 if img.mode == "I" else np.uint16)
        arr = (arr.astype(np.float64) * (255.0 / (65535.0 if arr.max() > 255 else 255.0))).round()
        img = Image.fromarray(arr.clip(0, 255).astype(np.uint8))
    if img.mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        img = Image.fromarray(arr.clip(0, 255).round().astype(np.uint8))
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    return img.convert("RGB")


_DEFLATE_MAX_RATIO = 1032
_JPEG_SOF = {0xC0 + n for n in range(16)} - {0xC4, 0xC8, 0xCC}  # start-of-frame markers


def _jpeg_scan_bytes_needed(data: bytes, w: int, h: int) -> int:
    """A lower bound on the bytes of a JPEG's entropy-coded data for a ``w``×``h`` frame.

    The full-resolution component has ``⌈w/8⌉·⌈h/8⌉`` blocks; Huffman coding spends at least
    one bit on each block's DC coefficient (the shortest code is one bit, and a progressive
    file still codes every DC). Arithmetic-coded frames (SOF9 and up) can spend less, so they
    get a 64 times weaker bound. Returns 0 when no frame header is found (Pillow decides).
    """
    pos = 2
    while pos + 4 <= len(data) and data[pos] == 0xFF:
        marker = data[pos + 1]
        if marker in _JPEG_SOF:
            blocks = -(-w // 8) * -(-h // 8)
            return blocks // 8 if marker < 0xC9 else blocks // 512
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        pos += 2 + int.from_bytes(data[pos + 2 : pos + 4], "big")
    return 0


def check_pixels(width: int, height: int, max_pixels: int) -> None:
    """:class:`ImageDecodeError` when a ``width``×``height`` image is over ``max_pixels``."""
    if width * height > max_pixels:
        raise ImageDecodeError(f"{width}x{height} = {width * height} pixels is over the limit of {max_pixels}")


_TRANSPOSED = (5, 6, 7, 8)  # EXIF orientations that swap width and height


def image_size(stream: BinaryIO) -> tuple[int, int]:
    """``(width, height)`` of an image as :func:`decode_image` returns it (EXIF orientation
    applied), from its header only: the pixels are not decoded.

    A PNG's orientation is read only from an ``eXIf`` chunk before the image data (reading one
    after it would decode the image), and :func:`decode_image` ignores a later one too, so the
    two always agree.

    Raises :class:`ImageDecodeError` for what is not a readable image header.
    """
    try:
        with Image.open(stream) as img:
            w, h = img.size
            exif = Image.Exif() if img.format == "PNG" and "exif" not in img.info else img.getexif()
            if exif.get(0x0112) in _TRANSPOSED:
                w, h = h, w
    except UnidentifiedImageError:
        raise ImageDecodeError("not a supported image format") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageDecodeError(f"corrupt or truncated image: {exc}") from None
    return w, h


def decode_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> Tensor:
    """Encoded image bytes → uint8 tensor ``(3, H, W)`` following the module's policy.

    Raises :class:`ImageDecodeError` for empty, corrupt, truncated, unsupported or
    oversized inputs.
    """
    if not data:
        raise ImageDecodeError("empty file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit applies
            with Image.open(io.BytesIO(data)) as img:
                w, h = img.size
                check_pixels(w, h, max_pixels)
                if img.format == "PNG" and h * (-(-w // 8) + 1) > _DEFLATE_MAX_RATIO * len(data):
                    # deflate expands at most 1032:1 and a PNG row holds at least w/8 bytes and a
                    # filter byte: these bytes cannot hold this image (a header-only bomb)
                    raise ImageDecodeError(f"corrupt or truncated image: {len(data)} bytes cannot hold a {w}x{h} PNG")
                if img.format == "JPEG" and len(data) < _jpeg_scan_bytes_needed(data, w, h):
                    # libjpeg fills missing blocks with grey and Pillow passes that on: refuse
                    raise ImageDecodeError(f"corrupt or truncated image: {len(data)} bytes cannot hold a {w}x{h} JPEG")
                frames = int(getattr(img, "n_frames", 1))
                if frames > 1:  # archiving the first frame would lose the rest without a word
                    raise ImageDecodeError(f"animated image with {frames} frames: only still images are archived")
                # a PNG's eXIf counts only before IDAT, where image_size (a header read) finds it
                oriented = img.format != "PNG" or "exif" in img.info
                img.load()
                if oriented:  # in place, and only when needed: a large image is held once, not copied
                    ImageOps.exif_transpose(img, in_place=True)
                rgb = img if img.mode == "RGB" else _to_rgb8(img)
                arr = np.array(rgb, dtype=np.uint8)
                del rgb
    except ImageDecodeError:
        raise
    except UnidentifiedImageError:
        raise ImageDecodeError("not a supported image format") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageDecodeError(f"corrupt or truncated image: {exc}") from None
    # A channel-first view of the one decoded copy: large images are not copied again.
    return torch.from_numpy(arr).permute(2, 0, 1)


def encode_png(image: Tensor) -> bytes:
    """uint8 ``(3, H, W)`` → PNG bytes."""
    buf = io.BytesIO()
    Image.fromarray(image.permute(1, 2, 0).contiguous().numpy()).save(buf, format="PNG")
    return buf.getvalue()
