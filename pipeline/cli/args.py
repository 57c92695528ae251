"""The command line's shared argument types and coding flags. ``oml compress``, ``oml archive`` and the
Ray jobs (``jobs/compress.py``) build their coding flags with :func:`add_coding_arguments`, so the
single-file command and the archive cannot drift apart. A leaf: loads no torch, CompressAI or Ray."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable

from oml.names import DEFAULT_EFFORT, DEFAULT_MAX_PIXELS, DEFAULT_MODEL, EFFORTS, METRICS, MODEL_IDS, TILE


class UserError(Exception):
    """A mistake in the command line: reported as one line, exit status 2."""


class StoppedError(Exception):
    """The run cannot go on (the output's file system is full or read-only): one line, exit status 1."""


def number_arg(low: float, above: bool = False) -> Callable[[str], float]:
    """An argparse type: a finite number ``>= low`` (``> low`` with ``above``). NaN, which no
    comparison rejects, and infinities are refused here, in one line (exit 2)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not math.isfinite(value) or value < low or (above and value == low):
            raise argparse.ArgumentTypeError(f"{text!r}: give a finite number {'>' if above else '>='} {low:g}")
        return value

    return parse


positive_number = number_arg(0.0, above=True)  # one object per kind: the flags of `oml compress` and `oml archive` compare equal


non_negative_number = number_arg(0.0)


def region_arg(text: str) -> tuple[int, int, int, int]:
    """``--region LEFT,TOP,WIDTH,HEIGHT`` (pixels) as a tuple; argparse reports a malformed one."""
    parts = text.split(",")
    try:
        left, top, width, height = (int(p) for p in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not LEFT,TOP,WIDTH,HEIGHT (four integers, in pixels)") from None
    if left < 0 or top < 0 or width < 1 or height < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: LEFT and TOP must be >= 0, WIDTH and HEIGHT >= 1")
    return left, top, width, height


def count_arg(low: int) -> Callable[[str], int]:
    """An argparse type: a whole number ``>= low``, else one line (exit 2) before anything starts."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"{text!r}: give a whole number >= {low}")
        return value

    return parse


positive_count = count_arg(1)  # one object per kind: jobs/*.py and `oml archive`/`oml restore` build parsers that compare equal


non_negative_count = count_arg(0)


def add_coding_arguments(p: argparse.ArgumentParser) -> None:
    """The coding flags: ``oml compress`` and ``oml archive`` (``jobs/compress.py``) both take exactly these."""
    rate = p.add_mutually_exclusive_group()
    rate.add_argument("--quality", "-q", type=int, help="quality (default 3); see the model's groups")
    rate.add_argument("--lmbda", type=positive_number, help="rate-distortion trade-off λ (λ-conditioned models take any value in range)")
    rate.add_argument("--target-psnr", type=positive_number, metavar="DB", help="per image, the λ whose file decodes closest to this PSNR (within 0.1 dB)")
    rate.add_argument("--target-bpp", type=positive_number, metavar="BPP", help="per image, the λ whose file is closest to this size in bits per pixel (within 3 %%)")
    p.add_argument("--model", default=DEFAULT_MODEL, choices=MODEL_IDS, help=f"model id (default {DEFAULT_MODEL})")
    p.add_argument("--weights", help="local oml weights file instead of the model's default source (on every node, for the archive)")
    p.add_argument("--effort", default=DEFAULT_EFFORT, choices=EFFORTS,
                   help=f"encoder effort (default {DEFAULT_EFFORT}): fast = no adaptation, default = quick online adaptation, "
                   "archival = quick adaptation and 400 latent-refinement iterations per tile; --steps and --refine override it")
    p.add_argument("--steps", type=int, help="iterations of the paper's online-adaptation search per tile instead of the effort's adaptation (0: none; at most 200)")
    p.add_argument("--metric", nargs="+", default=["psnr"], choices=METRICS, help="adapt for these metrics; one λ* set each")
    p.add_argument("--refine", type=int, metavar="N", help="latent-refinement iterations per tile, for the first metric, instead of the effort's (0: none, at most 2000; slower encoding, same decoder)")
    p.add_argument("--tile", type=int, default=TILE, help="tile size in pixels (multiple of 64, default 512)")
    p.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS, help="refuse larger images (decompression bombs)")
    p.add_argument("--to-srgb", action="store_true", help="convert images whose colour profile (ICC) is not sRGB to sRGB (relative colorimetric); without it the pixels are coded as stored and the profile kept with them")
    p.add_argument("--metadata-limit", type=int, metavar="BYTES", help="metadata blocks kept per image (EXIF, ICC, XMP, IPTC, PNG text; default 1000000); an image over it is named")


# Iterations per tile a command accepts: adaptation's gain saturates by about 20 steps and
# refinement's by a few hundred (docs/RESULTS.md), and each costs a multiple of the plain encode
# time, so a larger count is a typo, not a wish (10^9 would run for years).
MAX_COUNTS = {"steps": 200, "refine": 2000}


def check_counts(args: argparse.Namespace) -> None:
    """UserError unless ``--steps`` and ``--refine`` (one value or a list) are within 0..MAX_COUNTS; then,
    for a coding command, fills ``steps``, ``refine`` and ``quick`` from ``--effort`` where not given."""
    for flag, most in MAX_COUNTS.items():
        values = getattr(args, flag, None)
        values = [v for v in (values if isinstance(values, list) else [values]) if v is not None]
        if any(n < 0 for n in values):
            raise UserError(f"--{flag} must be 0 or more")
        if any(n > most for n in values):
            raise UserError(f"--{flag} must be at most {most} iterations per tile")
    if isinstance(getattr(args, "effort", None), str):
        from oml.effort import coding_effort

        effort = coding_effort(args.effort, tuple(args.metric), args.steps, args.refine)
        args.steps, args.refine, args.quick = effort.adapt.steps, effort.refine.iterations, effort.adapt.quick


def quality_group(name: str) -> tuple[int, ...]:
    from oml.models.zoo import ZOO

    return ZOO[name].groups[0]


def first_quality(name: str) -> int:
    return quality_group(name)[0] if name in MODEL_IDS else 1
