"""Image bytes ⇄ tensors, with the project's input policy.

Policy (applies to every input format Pillow reads: PNG, JPEG, WebP, TIFF, …):

- EXIF orientation is applied, so the archive stores the image as viewers show it (a PNG's
  ``eXIf`` chunk only before the image data, where a reader of the header finds it).
- Grayscale (``L``, ``I;16``…), palette (``P``), CMYK and other modes are converted
  to 8-bit RGB; grayscale becomes three equal channels. 1-, 2- and 4-bit samples are expanded
  to 8 bits (exact: nothing is lost).
- Alpha (``RGBA``, ``LA``, ``P`` with transparency) is dropped: only the colour is
  coded. Transparency is not preserved.
- Samples deeper than 8 bits are reduced by the depth the FILE DECLARES, never by the values it
  holds (a dark 16-bit frame stays dark):

  * unsigned integers of ``b`` bits (PNG bit depth 16, any colour type; TIFF ``BitsPerSample``
    9–32): ``round(v · 255 / (2^b − 1))`` per sample, computed exactly in integers (for 16 bits,
    ``round(v / 257)``; no value falls on a tie). Pillow keeps only the high byte of a 16-bit RGB
    or RGBA sample (``v >> 8``, which is not ``round(v / 257)``), so such files are decoded twice,
    for the high and then the low bytes, and combined in bands of rows (memory: the 8-bit
    result plus one 8-bit decode);
  * float samples (TIFF ``SampleFormat`` 3) and signed integers (``SampleFormat`` 2): the range
    the file declares (``SMinSampleValue``/``SMaxSampleValue``) is mapped linearly onto 0…255,
    rounded, values outside it clipped; with no declared range the image is REFUSED (there is
    no knowing whether 1.0 is white or nearly black). NaN samples are refused;
  * a deeper-than-8-bit layout this reader has no rule for is refused, never guessed.

  The reduction is never silent: :func:`decode` and :func:`read_header` return a note
  ("16-bit source reduced to 8 bits"), which ``oml compress`` prints and ``oml archive`` records
  in its summary.
- Colour profiles (ICC; a PNG's ``iCCP``, a JPEG's APP2, a TIFF's tag 34675, a WebP's ``ICCP``):
  an RGB profile travels with the pixels: they are coded as stored and the profile is kept
  verbatim with the image's other metadata (:mod:`oml.metadata`; a restored PNG carries it as
  ``iCCP``). ``to_srgb`` (``--to-srgb``) converts instead, for users who want one colour space.
  A profile for other pixels (grey, CMYK) that is not sRGB is refused unless ``to_srgb``
  converts it (an RGB PNG cannot carry it). A profile counts as sRGB when converting
  through it to sRGB changes no colour by more than one level in 255 (tested on a grid of
  colours and every level of each channel: any sRGB profile passes, whatever its version, curve
  encoding or description; Display P3, Adobe RGB, ProPhoto, CMYK profiles do not), and its
  image is kept as it is. With ``to_srgb`` an image with any other profile has its pixels converted to
  sRGB by littlecms (Pillow's ``ImageCms``) with the relative colorimetric intent and black
  point compensation: every colour sRGB can show keeps its appearance, colours outside sRGB are
  clipped to its gamut's edge (for matrix profiles, Display P3 and Adobe RGB among them,
  littlecms has no perceptual tables, so the perceptual intent would give the same), and the
  conversion is noted like a depth reduction. A profile littlecms cannot read is refused.
- Images over ``max_pixels`` are refused before decoding (decompression bombs). This limit replaces
  Pillow's own (``Image.MAX_IMAGE_PIXELS``, about 179 Mpixel, which would refuse a 16384² scan
  even when a user raises ``--max-pixels``): importing this module turns Pillow's check off.

Everything the policy decides is read from the header, so :func:`read_header` (no pixels
decoded) refuses exactly what :func:`decode` refuses and notes what it notes.
"""

from __future__ import annotations

import functools
import io
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import BinaryIO, NamedTuple

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch import Tensor

from oml.names import DEFAULT_MAX_PIXELS, IMAGE_SUFFIXES

Image.MAX_IMAGE_PIXELS = None  # max_pixels below is the limit, checked before any pixel is decoded


class ImageDecodeError(ValueError):
    """The bytes are not an image this project can read; the message says why."""


@contextmanager
def _pillow_errors() -> Iterator[None]:
    """Inside, what Pillow raises for bytes it cannot read becomes one :class:`ImageDecodeError`
    (the policy's own refusals pass as they are)."""
    try:
        yield
    except ImageDecodeError:
        raise
    except UnidentifiedImageError:
        raise ImageDecodeError("not a supported image format") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageDecodeError(f"corrupt or truncated image: {exc}") from None


class Header(NamedTuple):
    """What an image's header says: its size as :func:`decode` returns it (EXIF orientation
    applied) and what the policy will change beyond the ordinary (``notes``, one line each)."""

    width: int
    height: int
    notes: tuple[str, ...] = ()


class Decoded(NamedTuple):
    """An image's uint8 pixels ``(3, H, W)`` and the policy's notes (see :class:`Header`)."""

    pixels: Tensor
    notes: tuple[str, ...] = ()


# --------------------------------------------------------------------------- declared sample depth

_DEEP_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")  # one channel, more than 8 bits
_SAMPLE_KINDS = {1: "uint", 2: "int", 3: "float"}  # TIFF SampleFormat
_NATIVE_LOW = "B" if sys.byteorder == "little" else "L"
_LOW_ORDER = {"B": "L", "L": "B", "N": _NATIVE_LOW}  # 16-bit rawmode suffix → the one that reads the low bytes
_TWO_PASS = ("RGB;16", "RGBA;16", "RGBX;16", "CMYK;16")  # Pillow reads only their high bytes
_STRIP_SAMPLES = 1 << 20  # samples per band of rows when reducing (bounded temporaries)


class _Samples(NamedTuple):
    """Samples the file declares deeper than 8 bits: ``bits`` each, ``kind`` ("uint", "int" or
    "float"), and for "int" and "float" the declared range ``low``…``high``."""

    bits: int
    kind: str
    low: float = 0.0
    high: float = 0.0

    @property
    def note(self) -> str:
        if self.kind == "uint":
            return f"{self.bits}-bit source reduced to 8 bits"
        return f"{_kind_name(self.kind, self.bits)} samples mapped from their declared range [{self.low:g}, {self.high:g}] to 8 bits"


def _kind_name(kind: str, bits: int) -> str:
    return "float" if kind == "float" else f"signed {bits}-bit"


def _rawmode(img: Image.Image) -> str:
    """The raw mode of the image's first tile: how the format declares its samples (``RGB;16B``…)."""
    if not img.tile:
        return ""
    args = img.tile[0].args
    return str(args[0] if isinstance(args, tuple) and args else args or "")


def _tag(img: Image.Image, tag: int) -> tuple:
    value = img.tag_v2.get(tag, ())  # type: ignore[attr-defined]
    return value if isinstance(value, tuple) else (value,)


def _declared_samples(img: Image.Image) -> _Samples | None:
    """The samples' declared depth and format when they are deeper than 8 bits, else ``None``.
    Raises :class:`ImageDecodeError` where no rule maps them to 8 bits."""
    raw = _rawmode(img)
    if img.format == "PNG":
        samples = _Samples(16, "uint") if ";16" in raw else None
    elif img.format == "TIFF":
        bits = max(_tag(img, 258) or (1,))
        kind = _SAMPLE_KINDS.get(max(_tag(img, 339) or (1,)))
        if kind is None:
            raise ImageDecodeError(f"TIFF SampleFormat {max(_tag(img, 339))} is not supported")
        if kind == "uint":
            samples = _Samples(bits, kind) if bits > 8 else None
        else:
            low, high = _tag(img, 340), _tag(img, 341)  # SMinSampleValue, SMaxSampleValue
            if not low or not high:
                raise ImageDecodeError(
                    f"{_kind_name(kind, bits)} samples with no declared range (TIFF SMinSampleValue/SMaxSampleValue): "
                    "which values are black and white is unknown"
                )
            samples = _Samples(bits, kind, float(min(low)), float(max(high)))
            if not (np.isfinite([samples.low, samples.high]).all() and samples.high > samples.low):
                raise ImageDecodeError(f"{_kind_name(kind, bits)} samples with an empty declared range [{samples.low:g}, {samples.high:g}]")
    elif img.mode in _DEEP_MODES or ";16" in raw:
        raise ImageDecodeError(f"{img.format} image with {img.mode} samples deeper than 8 bits: not supported")
    else:
        samples = None
    if samples is not None and not (img.mode in _DEEP_MODES or raw == "LA;16B" or raw[:-1] in _TWO_PASS):
        raise ImageDecodeError(f"{samples.bits}-bit {img.mode} samples ({raw}) are not supported")
    return samples


def _strips(width: int, height: int):
    """``(top, bottom)`` bands of rows holding about :data:`_STRIP_SAMPLES` pixels each."""
    rows = max(1, _STRIP_SAMPLES // max(width, 1))
    for top in range(0, height, rows):
        yield top, min(height, top + rows)


def _to8(values: np.ndarray, samples: _Samples) -> np.ndarray:
    """Declared-depth samples → uint8, by the module's rule."""
    if samples.kind == "uint":
        most = (1 << samples.bits) - 1
        v = np.minimum(values.astype(np.uint64), most)
        return ((v * 510 + most) // (2 * most)).astype(np.uint8)  # round(v·255/most): most is odd, so no ties
    x = values.astype(np.float64)
    if np.isnan(x).any():
        raise ImageDecodeError(f"{_kind_name(samples.kind, samples.bits)} samples include NaN: no 8-bit value for them")
    return np.clip(np.rint((x - samples.low) * (255.0 / (samples.high - samples.low))), 0, 255).astype(np.uint8)


def _with_rawmode(img: Image.Image, rawmode: str) -> None:
    img.tile = [t._replace(args=(rawmode, *t.args[1:]) if isinstance(t.args, tuple) else rawmode) for t in img.tile]


def _loaded(data: bytes, rawmode: str) -> Image.Image:
    """The image in ``data`` decoded with every tile's raw mode set to ``rawmode``."""
    img = Image.open(io.BytesIO(data))
    _with_rawmode(img, rawmode)
    img.load()
    return img


def _deep_pixels(img: Image.Image, data: bytes, samples: _Samples) -> np.ndarray:
    """uint8 samples, ``(H, W)`` grey or ``(H, W, C)`` (RGB, or CMYK), of an image declared deeper
    than 8 bits (``img`` opened on ``data``, not loaded)."""
    raw, (width, height) = _rawmode(img), img.size
    if raw[:-1] in _TWO_PASS:  # full samples = high bytes (Pillow's own decode) · 256 + low bytes
        channels = 4 if img.mode == "CMYK" else 3  # alpha dropped
        out = np.empty((height, width, channels), np.uint8)
        high = _loaded(data, raw)
        for top, bottom in _strips(width, height):
            out[top:bottom] = np.asarray(high.crop((0, top, width, bottom)))[..., :channels]
        del high  # one 8-bit decode held at a time, beside the result
        low = _loaded(data, raw[:-1] + _LOW_ORDER[raw[-1]])
        for top, bottom in _strips(width, height):
            v = out[top:bottom].astype(np.uint32) << 8 | np.asarray(low.crop((0, top, width, bottom)))[..., :channels]
            out[top:bottom] = _to8(v, samples)
        return out
    out = np.empty((height, width), np.uint8)
    if raw == "LA;16B":  # 16-bit grey and alpha, read as four plain bytes: grey high, grey low, alpha…
        _with_rawmode(img, "RGBA")
        img.load()
        for top, bottom in _strips(width, height):
            b = np.asarray(img.crop((0, top, width, bottom)))
            out[top:bottom] = _to8(b[..., 0].astype(np.uint32) << 8 | b[..., 1], samples)
        return out
    img.load()
    for top, bottom in _strips(width, height):
        v = np.asarray(img.crop((0, top, width, bottom)))
        if samples.kind == "uint" and v.dtype == np.int32:  # Pillow holds 32-bit unsigned samples as int32
            v = v.view(np.uint32)
        out[top:bottom] = _to8(v, samples)
    return out


# --------------------------------------------------------------------------- colour profiles

_ICC_SPACES = {"RGB": "RGB", "GRAY": "L", "CMYK": "CMYK"}  # profile colour space → the Pillow mode it converts from
_GREY_MODES = ("1", "L", "LA", "La", *_DEEP_MODES)


class _Profile(NamedTuple):
    """An embedded ICC profile: its colour space ("RGB", "GRAY", "CMYK"…), its description, and
    whether it is sRGB (see the module's policy)."""

    icc: bytes
    space: str
    description: str
    srgb: bool

    @property
    def note(self) -> str:
        return f"colours converted from {self.description!r} to sRGB"


@functools.lru_cache(maxsize=16)
def _transform(icc: bytes, mode: str):
    """littlecms transform from ``icc`` (pixels in Pillow ``mode``) to sRGB ``RGB``, with the
    policy's intent: relative colorimetric, black point compensation."""
    from PIL import ImageCms

    source = ImageCms.ImageCmsProfile(io.BytesIO(icc))
    return ImageCms.buildTransform(
        source, ImageCms.createProfile("sRGB"), mode, "RGB",
        renderingIntent=ImageCms.Intent.RELATIVE_COLORIMETRIC, flags=ImageCms.Flags.BLACKPOINTCOMPENSATION,
    )


def _srgb_probe(mode: str) -> Image.Image:
    """Colours that an sRGB profile must leave alone: a 16³ grid and every level of each channel."""
    levels = np.arange(256, dtype=np.uint8)
    if mode == "L":
        return Image.fromarray(levels.reshape(16, 16))
    grid = np.stack(np.meshgrid(*(levels[::17],) * 3, indexing="ij"), -1).reshape(-1, 3)
    ramps = [np.stack([levels * (c == k) for c in range(3)], -1) for k in range(3)] + [np.repeat(levels[:, None], 3, 1)]
    return Image.fromarray(np.concatenate([grid, *ramps]).astype(np.uint8).reshape(-1, 256, 3))


@functools.lru_cache(maxsize=32)
def _read_profile(icc: bytes) -> _Profile:
    """The profile ``icc`` describes. Raises :class:`ImageDecodeError` when littlecms cannot read it."""
    try:
        from PIL import ImageCms
    except ImportError:  # a Pillow built without littlecms
        raise ImageDecodeError("the image carries a colour profile and this Pillow has no littlecms (ImageCms) to read it") from None
    try:
        profile = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        description = " ".join(ImageCms.getProfileDescription(profile).split())[:80] or "unnamed"
    except (OSError, ImageCms.PyCMSError) as exc:
        raise ImageDecodeError(f"colour profile cannot be read ({' '.join(str(exc).split())})") from None
    space = profile.profile.xcolor_space.strip()
    srgb = False
    if space in ("RGB", "GRAY"):
        probe = _srgb_probe(_ICC_SPACES[space])
        try:
            shown = np.asarray(ImageCms.applyTransform(probe, _transform(icc, probe.mode)), dtype=np.int16)
        except ImageCms.PyCMSError as exc:
            raise ImageDecodeError(f"colour profile {description!r} cannot be used ({' '.join(str(exc).split())})") from None
        stored = np.asarray(probe.convert("RGB"), dtype=np.int16)
        srgb = int(np.abs(shown - stored).max()) <= 1
    return _Profile(icc, space, description, srgb)


def is_srgb_profile(icc: bytes) -> bool:
    """Whether the ICC profile ``icc`` counts as sRGB (the module's rule); ``False`` when unreadable."""
    try:
        return _read_profile(bytes(icc)).srgb
    except ImageDecodeError:
        return False


def _colour_profile(img: Image.Image, to_srgb: bool) -> _Profile | None:
    """The profile whose colours must be converted to sRGB, ``None`` when the pixels stay as they
    are (no profile, or sRGB). Raises :class:`ImageDecodeError` for a profile that is not sRGB
    unless ``to_srgb``, and for one that cannot convert this image."""
    icc = img.info.get("icc_profile")
    if not icc:
        return None
    profile = _read_profile(bytes(icc))
    if profile.srgb:
        return None
    family = "CMYK" if img.mode == "CMYK" else "GRAY" if img.mode in _GREY_MODES or _rawmode(img) == "LA;16B" else "RGB"
    if profile.space not in _ICC_SPACES or not (profile.space == family or (profile.space, family) == ("RGB", "GRAY")):
        raise ImageDecodeError(f"colour profile {profile.description!r} is for {profile.space} pixels, not {family}: cannot convert it to sRGB")
    if not to_srgb:
        if profile.space == "RGB":
            return None  # the pixels are coded as stored; the profile travels with them (oml.metadata)
        raise ImageDecodeError(
            f"colour profile {profile.description!r} is not sRGB and is for {profile.space} pixels, which an RGB archive cannot "
            "carry: pass --to-srgb to convert its colours to sRGB"
        )
    return profile


def _to_srgb(img: Image.Image, profile: _Profile) -> Image.Image:
    """8-bit pixels in ``profile``'s colour space → sRGB ``RGB`` (in place where the modes allow)."""
    from PIL import ImageCms

    mode = _ICC_SPACES[profile.space]
    if img.mode != mode:
        img = _to_rgb8(img) if mode == "RGB" else img.convert(mode)
    try:
        return ImageCms.applyTransform(img, _transform(profile.icc, mode), inPlace=mode == "RGB") or img
    except ImageCms.PyCMSError as exc:
        raise ImageDecodeError(f"cannot convert its colours from {profile.description!r} to sRGB: {exc}") from None


# --------------------------------------------------------------------------- policy

class _Policy(NamedTuple):
    samples: _Samples | None  # declared deeper than 8 bits
    profile: _Profile | None  # colours to convert to sRGB

    @property
    def notes(self) -> tuple[str, ...]:
        return tuple(x.note for x in (self.samples, self.profile) if x is not None)


def _policy(img: Image.Image, to_srgb: bool) -> _Policy:
    """What the policy does with this image, from its header alone (``img`` not loaded)."""
    return _Policy(_declared_samples(img), _colour_profile(img, to_srgb))


def _to_rgb8(img: Image.Image) -> Image.Image:
    """8-bit pixels of any mode → ``RGB`` (deeper samples take :func:`_deep_pixels`)."""
    if img.mode in _DEEP_MODES:
        raise ImageDecodeError(f"{img.mode} samples deeper than 8 bits reached the 8-bit conversion")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    return img.convert("RGB")


def _colour(img: Image.Image, profile: _Profile | None) -> Image.Image:
    if profile is not None:
        return _to_srgb(img, profile)
    return img if img.mode == "RGB" else _to_rgb8(img)


_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}  # EXIF orientation → the turn that shows the stored pixels upright (as ImageOps.exif_transpose)


def _deep_rgb(img: Image.Image, data: bytes, policy: _Policy, oriented: bool) -> np.ndarray:
    """``(H, W, 3)`` uint8 sRGB of an image declared deeper than 8 bits, oriented."""
    turn = _TRANSPOSE.get(img.getexif().get(0x0112, 1)) if oriented else None
    planes = _deep_pixels(img, data, policy.samples)
    if turn is None and policy.profile is None and (planes.ndim == 2 or planes.shape[2] == 3):  # no Pillow copy needed
        return planes if planes.ndim == 3 else np.repeat(planes[..., None], 3, axis=2)
    height, width = planes.shape[:2]
    mode = "L" if planes.ndim == 2 else "RGB" if planes.shape[2] == 3 else "CMYK"
    pic = Image.frombuffer(mode, (width, height), planes, "raw", mode, 0, 1)
    del planes
    if turn is not None:
        pic = pic.transpose(turn)
    return np.array(_colour(pic, policy.profile), dtype=np.uint8)


# --------------------------------------------------------------------------- reading

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


def _shown_size(img: Image.Image) -> tuple[int, int]:
    w, h = img.size
    exif = Image.Exif() if img.format == "PNG" and "exif" not in img.info else img.getexif()
    return (h, w) if exif.get(0x0112) in _TRANSPOSED else (w, h)


def read_header(stream: BinaryIO, to_srgb: bool = False) -> Header:
    """An image's size as :func:`decode` returns it (EXIF orientation applied) and its policy
    notes, from its header only: the pixels are not decoded.

    A PNG's orientation is read only from an ``eXIf`` chunk before the image data (reading one
    after it would decode the image), and :func:`decode` ignores a later one too, so the
    two always agree.

    Raises :class:`ImageDecodeError` for what is not a readable image header, and for what the
    policy refuses (samples with no declared range, a colour profile that is not sRGB without
    ``to_srgb``…), as :func:`decode` would.
    """
    with _pillow_errors(), Image.open(stream) as img:
        width, height = _shown_size(img)
        notes = _policy(img, to_srgb).notes
    return Header(width, height, notes)


def image_size(stream: BinaryIO) -> tuple[int, int]:
    """``(width, height)`` of an image as :func:`decode_image` returns it, from its header only
    (:func:`read_header`'s size, without the policy's checks)."""
    with _pillow_errors(), Image.open(stream) as img:
        return _shown_size(img)


def decode(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS, to_srgb: bool = False) -> Decoded:
    """Encoded image bytes → uint8 pixels ``(3, H, W)`` following the module's policy, and its notes.

    ``to_srgb``: convert the colours of an image whose ICC profile is not sRGB (refused otherwise).

    Raises :class:`ImageDecodeError` for empty, corrupt, truncated, unsupported or
    oversized inputs, and for what the policy refuses.
    """
    if not data:
        raise ImageDecodeError("empty file")
    with _pillow_errors():
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
                policy = _policy(img, to_srgb)  # from the header, as read_header decides
                # a PNG's eXIf counts only before IDAT, where image_size (a header read) finds it
                oriented = img.format != "PNG" or "exif" in img.info
                if policy.samples is not None:
                    arr = _deep_rgb(img, data, policy, oriented)
                else:
                    img.load()
                    if oriented:  # in place, and only when needed: a large image is held once, not copied
                        ImageOps.exif_transpose(img, in_place=True)
                    rgb = _colour(img, policy.profile)
                    arr = np.array(rgb, dtype=np.uint8)
                    del rgb
    # A channel-first view of the one decoded copy: large images are not copied again.
    return Decoded(torch.from_numpy(arr).permute(2, 0, 1), policy.notes)


class Source(NamedTuple):
    """What a source's header declares: its format (Pillow's name), the depth of its samples in
    bits and their format (``uint``, ``int``, ``float``), and whether the policy converts its
    colours to sRGB (then the blocks describing its colours no longer apply)."""

    format: str
    bits: int
    sample_format: str
    converted: bool


def describe(data: bytes, to_srgb: bool = False) -> Source:
    """:class:`Source` of an image's bytes, from its header (no pixels decoded); raises
    :class:`ImageDecodeError` for what :func:`read_header` refuses."""
    with _pillow_errors():
        with Image.open(io.BytesIO(data)) as img:
            policy = _policy(img, to_srgb)
            samples = policy.samples
            if samples is not None:
                bits, kind = samples.bits, samples.kind
            elif img.format == "TIFF":
                bits, kind = max(_tag(img, 258) or (1,)), _SAMPLE_KINDS.get(max(_tag(img, 339) or (1,)), "uint")
            elif img.format == "PNG" and data[12:16] == b"IHDR":
                bits, kind = data[24], "uint"
            else:
                bits, kind = (1 if img.mode == "1" else 8), "uint"
            return Source(img.format or "", int(bits), kind, policy.profile is not None)


def decode_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS, to_srgb: bool = False) -> Tensor:
    """:func:`decode`'s pixels: uint8 ``(3, H, W)``."""
    return decode(data, max_pixels, to_srgb).pixels


def encode_png(image: Tensor) -> bytes:
    """uint8 ``(3, H, W)`` → PNG bytes."""
    buf = io.BytesIO()
    Image.fromarray(image.permute(1, 2, 0).contiguous().numpy()).save(buf, format="PNG")
    return buf.getvalue()
