"""Names and limits that the command line needs before any model is loaded.

Importing this module imports nothing heavy (no torch, no CompressAI), so ``oml --help`` and
argument errors answer at once; the modules that own these values import them from here.
"""

from __future__ import annotations

DEFAULT_MODEL = "oml-default"
MODEL_IDS = ("oml-default", "bmshj2018-hyperprior", "mbt2018-mean", "mbt2018", "cheng2020-anchor", "cheng2020-attn")
METRICS = ("psnr", "ms-ssim")  # online-adaptation targets
PLAIN = "plain"  # the λ* set "no adaptation" (λ* = λ_t)
EFFORTS = ("fast", "default", "archival")  # encoder effort levels (oml.effort)
DEFAULT_EFFORT = "default"
ANCHORS = ("jpeg", "webp", "avif", "avif444", "hevc", "jxl")  # classical codecs oml eval compares with (oml.baselines)
STRONGEST_ANCHORS = ("jpeg", "webp", "avif444", "hevc", "jxl")  # its default: the strongest setting of each family
TILE = 512  # default tile side, pixels
DEFAULT_MAX_PIXELS = 150_000_000  # larger inputs are refused (decompression bombs)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff")
CODED_SUFFIX = ".oml"


class ModelUnavailableError(RuntimeError):
    """Weights for a model cannot be found or fetched; the message says how to supply them."""
