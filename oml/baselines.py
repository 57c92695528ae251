"""Classical codec anchors (JPEG, WebP, AVIF, HEVC, JPEG XL through Pillow) for rate-distortion comparisons.

Pure: a uint8 RGB tensor ``(3, H, W)`` goes in, encoded bytes and quality numbers come out.

Settings (fixed, so curves are reproducible; :func:`describe` gives them with the library versions):

- ``jpeg``: libjpeg(-turbo) via Pillow, ``quality=q``, 4:2:0 chroma subsampling, other
  options at Pillow's defaults (baseline, no Huffman optimisation).
- ``webp``: libwebp lossy, ``quality=q``, ``method=6`` (slowest, best compression).
- ``avif``: libavif via Pillow's AVIF plugin, ``quality=q``, encoder speed at Pillow's
  default, 4:2:0 (Pillow's default subsampling).
- ``avif444``: libavif, ``quality=q``, 4:4:4, ``speed=2`` (slow; the strongest AV1 intra setting
  that stays within seconds per image).
- ``hevc``: x265 through libheif (the ``pillow-heif`` plugin), ``quality=q``, 4:4:4: HEVC intra,
  the stand-in for BPG.
- ``jxl``: libjxl through the ``pillow-jxl-plugin``, ``quality=q``, ``effort=7`` (libjxl's default).

``avif`` is built into recent Pillow; ``hevc`` and ``jxl`` need their plugins (``pip install
'oml-archive[eval]'``): a missing one raises :class:`CodecUnavailableError`, which evaluation turns
into a note and a skipped curve.

PSNR is RGB PSNR on the 8-bit values (peak 255); MS-SSIM is computed on ``[0, 1]``
with :func:`oml.metrics.ms_ssim`.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import io
import numbers
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Sequence

import PIL
from PIL import Image, features
import torch
from torch import Tensor

from oml.imageio import decode_image
from oml.names import ANCHORS, STRONGEST_ANCHORS
from oml.metrics import bpp, ms_ssim, psnr


class CodecUnavailableError(RuntimeError):
    """The installed Pillow cannot encode this format; the message says how to get it."""


@dataclass(frozen=True)
class CodecSpec:
    """How one codec is driven through ``PIL.Image.save``."""

    pil_format: str
    feature: str | None
    """Name for ``PIL.features.check``; None when the format is always built in."""
    min_quality: int
    options: dict[str, Any] = field(default_factory=dict)
    plugin: str | None = None
    """Module that registers the format with Pillow (a separate package); None when Pillow has it."""
    package: str | None = None
    """The pip package of ``plugin``."""


CODECS: dict[str, CodecSpec] = {
    "jpeg": CodecSpec("JPEG", "jpg", 1, {"subsampling": "4:2:0"}),
    "webp": CodecSpec("WEBP", "webp", 0, {"method": 6}),
    "avif": CodecSpec("AVIF", "avif", 0, {}),
    "avif444": CodecSpec("AVIF", "avif", 0, {"subsampling": "4:4:4", "speed": 2}),
    "hevc": CodecSpec("HEIF", None, 0, {"chroma": 444}, plugin="pillow_heif", package="pillow-heif"),
    "jxl": CodecSpec("JXL", None, 1, {"effort": 7}, plugin="pillow_jxl", package="pillow-jxl-plugin"),
}
assert tuple(CODECS) == ANCHORS
# The anchors `oml eval` compares against unless told otherwise: the strongest setting of each family.
STRONGEST = STRONGEST_ANCHORS

DEFAULT_QUALITIES: dict[str, tuple[int, ...]] = {
    # Mean bpp over the 24 Kodak images (768×512) at the lowest … highest setting.
    # JPEG cannot go much below ~0.17 bpp at 4:2:0, whatever the quality.
    "jpeg": (2, 5, 10, 15, 20, 30, 40, 50, 60, 70, 80),  # ≈ 0.17 … 1.57 bpp
    "webp": (0, 5, 10, 20, 30, 40, 50, 65, 75, 85),  # ≈ 0.10 … 1.45 bpp
    "avif": (8, 15, 25, 35, 45, 55, 65, 75),  # ≈ 0.10 … 1.43 bpp
    "avif444": (8, 15, 25, 35, 45, 55, 65),  # ≈ 0.1 … 1.3 bpp
    "hevc": (10, 15, 20, 25, 30, 35, 40, 45),  # ≈ 0.1 … 1.15 bpp
    "jxl": (1, 5, 10, 20, 30, 40, 50, 60, 70, 80),  # ≈ 0.2 … 1.3 bpp
}


class BaselineResult(NamedTuple):
    """One encode/decode of one image at one quality setting."""

    codec: str
    quality: int
    num_bytes: int
    """Length of the encoded file, container included."""
    bpp: float
    """Bits per pixel: ``8 · num_bytes / (H · W)``."""
    psnr: float
    """RGB PSNR in dB on 8-bit values (inf if lossless)."""
    ms_ssim: float
    """MS-SSIM in ``[0, 1]``."""


def _spec(codec: str) -> CodecSpec:
    """Look up a codec and check that this Pillow (with its plugins) can encode it."""
    if codec not in CODECS:
        raise ValueError(f"unknown codec {codec!r}; choose one of {sorted(CODECS)}")
    spec = CODECS[codec]
    if spec.plugin is not None:
        try:
            module = importlib.import_module(spec.plugin)
        except ImportError as exc:
            raise CodecUnavailableError(f"{codec} needs the {spec.package} plugin for Pillow: pip install {spec.package}") from exc
        if spec.plugin == "pillow_heif":
            module.register_heif_opener()
    if spec.feature is not None and not features.check(spec.feature):
        raise CodecUnavailableError(
            f"this Pillow ({PIL.__version__}) cannot encode {codec.upper()}; install a Pillow "
            "built with it (AVIF: recent Pillow wheels ship libavif; on older Pillow, "
            "`pip install pillow-avif-plugin`)"
        )
    return spec


def describe(codec: str) -> dict[str, Any]:
    """What encodes ``codec`` here: the Pillow format, the fixed options and the library versions.
    Raises :class:`CodecUnavailableError` when it cannot be encoded."""
    spec = _spec(codec)
    versions = {"pillow": PIL.__version__}
    if spec.feature is not None:
        versions[spec.feature] = features.version(spec.feature)
    if spec.package is not None:
        versions[spec.package] = importlib.metadata.version(spec.package)
    if spec.plugin == "pillow_heif":
        import pillow_heif

        versions["encoder"] = pillow_heif.libheif_info().get("HEIF") or "unknown"
        versions["libheif"] = pillow_heif.libheif_info().get("libheif")
    return {"format": spec.pil_format, "options": dict(spec.options), "versions": versions}


def _check_image(image: Tensor) -> None:
    if not isinstance(image, Tensor):
        raise ValueError(f"expected a torch tensor, got {type(image).__name__}")
    if image.dim() != 3 or image.shape[0] != 3 or image.shape[1] < 1 or image.shape[2] < 1:
        raise ValueError(f"expected an RGB image of shape (3, H, W), got {tuple(image.shape)}")
    if image.dtype != torch.uint8:
        raise ValueError(f"expected a uint8 image (0–255), got dtype {image.dtype}; use (x * 255).round().byte()")


def _check_quality(codec: str, quality: int, spec: CodecSpec) -> int:
    """Validate a quality setting and return it as a plain int."""
    if isinstance(quality, bool) or not isinstance(quality, numbers.Integral):
        raise ValueError(f"quality must be an int, got {quality!r}")
    if not spec.min_quality <= quality <= 100:
        raise ValueError(f"{codec} quality must be in [{spec.min_quality}, 100], got {quality}")
    return int(quality)


def encode(image: Tensor, codec: str, quality: int) -> bytes:
    """Encode a uint8 RGB image ``(3, H, W)`` with ``codec`` at ``quality``; returns the file bytes."""
    spec = _spec(codec)
    _check_image(image)
    quality = _check_quality(codec, quality, spec)
    pixels = image.detach().cpu().permute(1, 2, 0).contiguous().numpy()
    buf = io.BytesIO()
    Image.fromarray(pixels, mode="RGB").save(buf, format=spec.pil_format, quality=quality, **spec.options)
    return buf.getvalue()


def decode(data: bytes) -> Tensor:
    """Encoded bytes of any of :data:`CODECS` → uint8 RGB tensor ``(3, H, W)``."""
    return decode_image(data)


def evaluate(image: Tensor, codec: str, quality: int) -> BaselineResult:
    """Encode, decode and measure one image ``(3, H, W)`` uint8 at one quality."""
    data = encode(image, codec, quality)
    recon = decode(data)
    if recon.shape != image.shape:
        raise ValueError(f"{codec} decoded to shape {tuple(recon.shape)}, expected {tuple(image.shape)}")
    original = image.detach().cpu()
    return BaselineResult(
        codec=codec,
        quality=int(quality),
        num_bytes=len(data),
        bpp=bpp(len(data), image.shape[1], image.shape[2]),
        psnr=float(psnr(original, recon)),
        ms_ssim=float(ms_ssim(original, recon)),
    )


def sweep(image: Tensor, codec: str, qualities: Sequence[int] | None = None) -> list[BaselineResult]:
    """Evaluate ``image`` (uint8 ``(3, H, W)``) at each quality, in the order given.

    ``qualities`` defaults to :data:`DEFAULT_QUALITIES` for the codec (≥ 6 points
    spanning roughly 0.1–1.5 bpp on Kodak-like images).
    """
    spec = _spec(codec)
    chosen = DEFAULT_QUALITIES[codec] if qualities is None else tuple(qualities)
    if not chosen:
        raise ValueError("qualities is empty; pass at least one quality or None for the defaults")
    chosen = tuple(_check_quality(codec, q, spec) for q in chosen)
    return [evaluate(image, codec, q) for q in chosen]
