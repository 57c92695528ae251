"""Rate control: code an image at a target PSNR or bpp by searching the model's continuous λ.

A λ-conditioned model codes any λ in its trained range, and both bpp and PSNR grow with λ. The
search runs the whole encoder (tiling, online adaptation with the caller's settings, entropy
coding) at each λ it tries, so what it measures is what the file holds: the bpp of the real bytes
and the PSNR of the decoder's 8-bit output against the image.

1. Code at both ends of the trained range. A target outside what they reach is an error naming
   the reachable range (:class:`TargetOutOfRange`), never a silent clamp.
2. Regula falsi with the Illinois modification on ``log λ`` (the curves are close to linear in
   ``log λ``, so this converges in a few steps; the Illinois rule keeps it from stalling on one
   side), stopping once the result is within ``tolerance`` of the target.
3. Return the closest coding found (ties: the smaller file).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

from torch import Tensor

from oml import codec
from oml.adapt import AdaptConfig
from oml.metrics import psnr
from oml.models.variable_rate import VariableRateModel
from oml.refine import RefineConfig

# How close the search tries to get (the documented guarantee is looser: 0.1 dB and 3 %).
PSNR_TOLERANCE_DB = 0.03
BPP_TOLERANCE = 0.01  # relative
MAX_EVALUATIONS = 14


class TargetOutOfRange(ValueError):
    """The target lies outside what the model reaches on this image; the message names the range."""


@dataclass(frozen=True)
class Target:
    """``kind`` is ``"psnr"`` (dB) or ``"bpp"``."""

    kind: str
    value: float

    def __post_init__(self) -> None:
        if self.kind not in ("psnr", "bpp"):
            raise ValueError(f"target kind must be psnr or bpp, got {self.kind!r}")
        if not math.isfinite(self.value) or self.value <= 0:
            raise ValueError(f"target {self.kind} must be a positive number, got {self.value}")

    def describe(self, value: float) -> str:
        return f"{value:.2f} dB" if self.kind == "psnr" else f"{value:.4f} bpp"

    def close_enough(self, value: float) -> bool:
        if self.kind == "psnr":
            return abs(value - self.value) <= PSNR_TOLERANCE_DB
        return abs(value - self.value) <= BPP_TOLERANCE * self.value


class Trial(NamedTuple):
    lmbda: float
    encoded: codec.Encoded
    bpp: float
    psnr: float


class RateControlled(NamedTuple):
    """The chosen coding, its λ, what it reached, and every λ tried (in order)."""

    encoded: codec.Encoded
    lmbda: float
    bpp: float
    psnr: float
    trials: list[tuple[float, float, float]]  # (λ, bpp, PSNR)


def image_psnr(reconstruction: Tensor, image: Tensor) -> float:
    """PSNR in dB of two uint8 ``(3, H, W)`` images (whole-image MSE, peak 255)."""
    return float(psnr(reconstruction, image))


def target_from(psnr_db: float | None, bpp: float | None) -> Target | None:
    """The target the ``--target-psnr`` / ``--target-bpp`` flags ask for (at most one is given)."""
    if psnr_db is not None:
        return Target("psnr", psnr_db)
    return Target("bpp", bpp) if bpp is not None else None


def check_model(model: VariableRateModel) -> None:
    """ValueError unless ``model`` codes a continuous λ (rate control searches over it)."""
    if not model.conditional:
        raise ValueError(f"{model.name} codes only its fixed qualities; --target-psnr/--target-bpp need a λ-conditioned model such as oml-default")


def encode_to_target(
    model: VariableRateModel,
    image: Tensor,
    target: Target,
    adapt_config: AdaptConfig = AdaptConfig(),
    tile_size: int | None = None,
    encode: Callable[..., codec.Encoded] | None = None,
    refine_config: RefineConfig = RefineConfig(),
) -> RateControlled:
    """Code uint8 ``image`` ``(3, H, W)`` so that its bpp or PSNR is as close to ``target`` as the
    model allows; raises :class:`TargetOutOfRange` when the target is not reachable."""
    check_model(model)
    encode = encode or codec.encode
    pixels = image.shape[1] * image.shape[2]
    kwargs = {"adapt_config": adapt_config, "refine_config": refine_config} | ({"tile_size": tile_size} if tile_size else {})
    trials: list[Trial] = []

    def attempt(lmbda: float) -> float:
        enc = encode(model, image, lmbda=lmbda, **kwargs)
        trial = Trial(lmbda, enc, 8.0 * len(enc.data) / pixels, image_psnr(enc.reconstruction, image))
        trials.append(trial)
        return measured(trial)

    def measured(trial: Trial) -> float:
        return trial.psnr if target.kind == "psnr" else trial.bpp

    low, high = model.lambda_range
    f_low, f_high = attempt(low), attempt(high)
    slack = PSNR_TOLERANCE_DB if target.kind == "psnr" else BPP_TOLERANCE * target.value
    if not f_low - slack <= target.value <= f_high + slack:
        raise TargetOutOfRange(
            f"target {target.describe(target.value)} is outside what {model.name} reaches on this image: "
            f"{target.describe(f_low)} (λ={low:g}) to {target.describe(f_high)} (λ={high:g})"
        )
    a, b = math.log(low), math.log(high)
    g_a, g_b = f_low - target.value, f_high - target.value
    side = 0
    while not any(target.close_enough(measured(t)) for t in trials) and len(trials) < MAX_EVALUATIONS:
        u = b - g_b * (b - a) / (g_b - g_a) if g_b != g_a else 0.5 * (a + b)
        if not min(a, b) < u < max(a, b):  # flat or non-monotone stretch: bisect
            u = 0.5 * (a + b)
        g_u = attempt(float(math.exp(u))) - target.value
        if (g_u > 0) == (g_b > 0):  # the new point replaces b; Illinois: halve the stale end's weight
            b, g_b = u, g_u
            if side == -1:
                g_a /= 2
            side = -1
        else:
            a, g_a = u, g_u
            if side == 1:
                g_b /= 2
            side = 1
    best = min(trials, key=lambda t: (abs(measured(t) - target.value), len(t.encoded.data)))
    return RateControlled(best.encoded, best.lmbda, best.bpp, best.psnr, [(t.lmbda, t.bpp, t.psnr) for t in trials])


def reached(result: RateControlled, target: Target) -> str:
    """One line: what was asked, what the file holds, at which λ, after how many codings."""
    value = result.psnr if target.kind == "psnr" else result.bpp
    return f"target {target.describe(target.value)}: reached {target.describe(value)} at λ={result.lmbda:.5g} ({len(result.trials)} codings)"


__all__ = ["Target", "TargetOutOfRange", "RateControlled", "check_model", "encode_to_target", "image_psnr", "reached", "target_from"]
