"""Image-quality and rate metrics: MSE, PSNR, MS-SSIM, bpp and Bjøntegaard deltas.

Conventions shared by the image metrics:

- Inputs are ``(B, C, H, W)`` (batched, result of shape ``(B,)``) or ``(C, H, W)``
  (unbatched, result is a 0-dim tensor). ``C`` is normally 3 (RGB).
- Float tensors are taken to lie in ``[0, data_range]``. ``uint8`` tensors are 8-bit
  images: they are converted to float in ``[0, 1]``, so ``data_range`` must stay 1.0
  for them. A uint8 image may be compared with a float image in ``[0, 1]``.
- Everything is plain torch and differentiable with respect to float inputs.

References:

- Z. Wang, E. P. Simoncelli, A. C. Bovik, "Multiscale Structural Similarity for Image
  Quality Assessment", Asilomar Conference on Signals, Systems and Computers, 2003.
- G. Bjøntegaard, "Calculation of Average PSNR Differences between RD-curves",
  ITU-T SG16 VCEG-M33, 2001.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from numpy.polynomial import Polynomial
from torch import Tensor

MS_SSIM_WEIGHTS: tuple[float, ...] = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
"""Per-scale exponents of Wang, Simoncelli & Bovik (2003), finest scale first."""

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1 = 0.01
SSIM_K2 = 0.03
_POSITIVE_FLOOR = 1e-8  # below this an SSIM term counts as 0, keeping pow() gradients finite


class MsSsimPlan(NamedTuple):
    """How MS-SSIM is evaluated for one image size (see :func:`ms_ssim_plan`)."""

    window: int
    """Side of the Gaussian window in pixels (odd, at most 11)."""
    weights: tuple[float, ...]
    """Exponent per scale, finest first; one entry per scale, summing to 1 when truncated."""


def _as_float_pair(x: Tensor, y: Tensor, data_range: float) -> tuple[Tensor, Tensor, bool]:
    """Validate two images and return them as float ``(B, C, H, W)`` plus "was batched"."""
    if not isinstance(x, Tensor) or not isinstance(y, Tensor):
        raise ValueError(f"expected two torch tensors, got {type(x).__name__} and {type(y).__name__}")
    if x.shape != y.shape:
        raise ValueError(f"images must have the same shape, got {tuple(x.shape)} and {tuple(y.shape)}")
    if x.dim() not in (3, 4):
        raise ValueError(f"expected (C, H, W) or (B, C, H, W), got shape {tuple(x.shape)}")
    if x.numel() == 0:
        raise ValueError(f"images are empty: shape {tuple(x.shape)}")
    if not data_range > 0:
        raise ValueError(f"data_range must be positive, got {data_range}")
    if torch.uint8 in (x.dtype, y.dtype) and data_range != 1.0:
        raise ValueError(
            "uint8 images are scaled to [0, 1], so data_range must be 1.0 "
            f"(got {data_range}); pass float tensors to use another range"
        )
    batched = x.dim() == 4
    x, y = _to_float(x), _to_float(y)
    if y.dtype != x.dtype:
        common = torch.promote_types(x.dtype, y.dtype)
        x, y = x.to(common), y.to(common)
    if not batched:
        x, y = x.unsqueeze(0), y.unsqueeze(0)
    return x, y, batched


def _to_float(x: Tensor) -> Tensor:
    if x.dtype == torch.uint8:
        return x.to(torch.float32) / 255.0
    if not x.is_floating_point():
        raise ValueError(f"expected a float or uint8 tensor, got dtype {x.dtype}")
    return x


def _unbatch(values: Tensor, batched: bool) -> Tensor:
    return values if batched else values[0]


def mse(x: Tensor, y: Tensor, data_range: float = 1.0) -> Tensor:
    """Mean squared error per image.

    Args:
        x, y: images ``(B, C, H, W)`` or ``(C, H, W)``, float in ``[0, data_range]`` or uint8.
        data_range: only validated here (uint8 inputs need 1.0); the MSE is in input units².

    Returns:
        ``(B,)`` for batched input, a 0-dim tensor otherwise.
    """
    x, y, batched = _as_float_pair(x, y, data_range)
    return _unbatch((x - y).square().flatten(1).mean(dim=1), batched)


def psnr(x: Tensor, y: Tensor, data_range: float = 1.0) -> Tensor:
    """Peak signal-to-noise ratio in dB per image: ``10·log10(data_range² / MSE)``.

    Identical images give ``+inf``. For uint8 inputs this is the usual 8-bit PSNR
    (peak 255), because both images are scaled to ``[0, 1]``.

    Returns:
        ``(B,)`` for ``(B, C, H, W)`` input, a 0-dim tensor for ``(C, H, W)``.
    """
    err = mse(x, y, data_range)
    return 10.0 * torch.log10(data_range**2 / err)


def ms_ssim_plan(height: int, width: int) -> MsSsimPlan:
    """Window size and per-scale weights MS-SSIM uses for a ``height × width`` image.

    The standard setting (11-tap window, 5 scales) needs a side of at least 161 px,
    since the coarsest scale (``ceil(side / 16)``) must hold a whole window. Smaller
    images use as many scales as fit, with the first weights renormalised to sum to 1;
    images smaller than 11 px use a single scale (plain SSIM) with the largest odd
    window that fits.
    """
    if height < 1 or width < 1:
        raise ValueError(f"image must be at least 1x1, got {height}x{width}")
    side = min(height, width)
    window = min(SSIM_WINDOW, side if side % 2 == 1 else side - 1)
    scales = 1
    if window == SSIM_WINDOW:
        while scales < len(MS_SSIM_WEIGHTS) and _pooled_side(side, scales) >= window:
            scales += 1
    weights = MS_SSIM_WEIGHTS[:scales]
    if scales < len(MS_SSIM_WEIGHTS):
        total = sum(weights)
        weights = tuple(w / total for w in weights)
    return MsSsimPlan(window=window, weights=weights)


def _pooled_side(side: int, times: int) -> int:
    for _ in range(times):
        side = -(-side // 2)
    return side


def _gaussian_1d(size: int, sigma: float, like: Tensor) -> Tensor:
    """Normalised Gaussian taps ``(size,)`` in the dtype/device of ``like``."""
    coords = torch.arange(size, dtype=like.dtype, device=like.device) - (size - 1) / 2
    taps = torch.exp(-(coords**2) / (2 * sigma**2))
    return taps / taps.sum()


def _blur(x: Tensor, taps: Tensor) -> Tensor:
    """Separable 'valid' Gaussian filter: ``(B, C, H, W)`` → ``(B, C, H-k+1, W-k+1)``."""
    channels = x.shape[1]
    k = taps.numel()
    x = F.conv2d(x, taps.view(1, 1, k, 1).expand(channels, 1, k, 1), groups=channels)
    return F.conv2d(x, taps.view(1, 1, 1, k).expand(channels, 1, 1, k), groups=channels)


def _ssim_terms(x: Tensor, y: Tensor, taps: Tensor, data_range: float) -> tuple[Tensor, Tensor]:
    """Mean SSIM and mean contrast-structure term per image and channel, each ``(B, C)``."""
    c1 = (SSIM_K1 * data_range) ** 2
    c2 = (SSIM_K2 * data_range) ** 2
    mu_x, mu_y = _blur(x, taps), _blur(y, taps)
    var_x = _blur(x * x, taps) - mu_x.square()
    var_y = _blur(y * y, taps) - mu_y.square()
    cov = _blur(x * y, taps) - mu_x * mu_y
    cs_map = (2 * cov + c2) / (var_x + var_y + c2)
    luminance = (2 * mu_x * mu_y + c1) / (mu_x.square() + mu_y.square() + c1)
    return (luminance * cs_map).flatten(2).mean(-1), cs_map.flatten(2).mean(-1)


def _safe_pow(base: Tensor, exponent: float) -> Tensor:
    """``max(base, 0) ** exponent`` with finite gradients at and below 0."""
    positive = base > _POSITIVE_FLOOR
    return torch.where(positive, base.clamp_min(_POSITIVE_FLOOR) ** exponent, torch.zeros_like(base))


def ms_ssim(x: Tensor, y: Tensor, data_range: float = 1.0) -> Tensor:
    """Multi-scale SSIM (Wang, Simoncelli & Bovik 2003) per image, differentiable.

    Gaussian window 11 taps, σ = 1.5, K1 = 0.01, K2 = 0.03, five scales with weights
    :data:`MS_SSIM_WEIGHTS`, 2×2 average pooling between scales. Scale ``s`` contributes
    its contrast-structure term (the coarsest: full SSIM) raised to ``weights[s]``;
    negative terms count as 0. The product is taken per channel, then averaged over
    channels. Small images use fewer scales or a smaller window: see :func:`ms_ssim_plan`.
    Odd sizes are pooled over the real pixels only (``pytorch_msssim`` zero-pads them),
    so the two agree exactly on sizes that stay even through the scales.

    Args:
        x, y: ``(B, C, H, W)`` or ``(C, H, W)``, float in ``[0, data_range]`` or uint8.
        data_range: value range of float inputs (1.0 for uint8).

    Returns:
        Values in ``[0, 1]`` (1 for identical images): ``(B,)``, or 0-dim if unbatched.
    """
    x, y, batched = _as_float_pair(x, y, data_range)
    plan = ms_ssim_plan(x.shape[-2], x.shape[-1])
    taps = _gaussian_1d(plan.window, SSIM_SIGMA, x)
    value = torch.ones(x.shape[:2], dtype=x.dtype, device=x.device)
    last = len(plan.weights) - 1
    for scale, weight in enumerate(plan.weights):
        ssim_val, cs = _ssim_terms(x, y, taps, data_range)
        value = value * _safe_pow(ssim_val if scale == last else cs, weight)
        if scale < last:
            x = F.avg_pool2d(x, kernel_size=2, ceil_mode=True)
            y = F.avg_pool2d(y, kernel_size=2, ceil_mode=True)
    return _unbatch(value.mean(dim=1), batched)


def ms_ssim_db(value: Tensor | float) -> Tensor | float:
    """MS-SSIM on a dB scale, ``-10·log10(1 - value)``; 1.0 maps to ``+inf``.

    Accepts a float (returns a float) or a tensor of any shape (elementwise).
    """
    if isinstance(value, Tensor):
        return -10.0 * torch.log10(1.0 - value)
    if not value <= 1.0:
        raise ValueError(f"MS-SSIM must be at most 1, got {value}")
    return math.inf if value == 1.0 else -10.0 * math.log10(1.0 - value)


def bpp(num_bytes: int, height: int, width: int) -> float:
    """Bits per pixel of ``num_bytes`` coding a ``height × width`` image."""
    if num_bytes < 0:
        raise ValueError(f"num_bytes must be non-negative, got {num_bytes}")
    if height < 1 or width < 1:
        raise ValueError(f"image must be at least 1x1, got {height}x{width}")
    return 8.0 * num_bytes / (height * width)


class RdCurve(NamedTuple):
    """A validated rate-distortion curve: rate (e.g. bpp, > 0) and distortion (PSNR, dB)."""

    rate: np.ndarray
    distortion: np.ndarray


def _curve(rate: Sequence[float], distortion: Sequence[float], name: str) -> RdCurve:
    r = np.asarray(rate, dtype=np.float64).ravel()
    d = np.asarray(distortion, dtype=np.float64).ravel()
    if r.size != d.size:
        raise ValueError(f"curve {name}: {r.size} rates but {d.size} distortions")
    if r.size < 4:
        raise ValueError(f"curve {name}: a cubic Bjøntegaard fit needs at least 4 points, got {r.size}")
    if not (np.all(np.isfinite(r)) and np.all(np.isfinite(d))):
        raise ValueError(f"curve {name}: rates and distortions must be finite (an inf PSNR means lossless)")
    if np.any(r <= 0):
        raise ValueError(f"curve {name}: rates must be positive, got min {r.min()}")
    return RdCurve(rate=r, distortion=d)


def _mean_gap(x_a: np.ndarray, y_a: np.ndarray, x_b: np.ndarray, y_b: np.ndarray, what: str) -> float:
    """Mean of ``fit_b(x) - fit_a(x)`` over the overlap of the x ranges (cubic fits)."""
    low = max(x_a.min(), x_b.min())
    high = min(x_a.max(), x_b.max())
    if not high > low:
        raise ValueError(
            f"the two curves' {what} ranges do not overlap "
            f"([{x_a.min():.4g}, {x_a.max():.4g}] vs [{x_b.min():.4g}, {x_b.max():.4g}])"
        )
    area_a = Polynomial.fit(x_a, y_a, 3).integ()
    area_b = Polynomial.fit(x_b, y_b, 3).integ()
    return float((area_b(high) - area_b(low) - area_a(high) + area_a(low)) / (high - low))


def bd_rate(
    rate_a: Sequence[float], dist_a: Sequence[float], rate_b: Sequence[float], dist_b: Sequence[float]
) -> float:
    """Bjøntegaard delta rate of curve B relative to curve A, in percent.

    Each curve's log-rate is fitted as a cubic polynomial of distortion (PSNR, dB) and
    the fits are compared over the overlapping distortion interval. Negative means B
    needs fewer bits than A at equal quality (−20.0 ≙ B's rates are 0.8 × A's).
    Needs ≥ 4 points per curve; raises ValueError when the PSNR ranges do not overlap.
    """
    a, b = _curve(rate_a, dist_a, "A"), _curve(rate_b, dist_b, "B")
    gap = _mean_gap(a.distortion, np.log(a.rate), b.distortion, np.log(b.rate), "distortion")
    return (math.exp(gap) - 1.0) * 100.0


def bd_psnr(
    rate_a: Sequence[float], dist_a: Sequence[float], rate_b: Sequence[float], dist_b: Sequence[float]
) -> float:
    """Bjøntegaard delta PSNR of curve B relative to curve A, in dB (positive = B better).

    Each curve's distortion is fitted as a cubic polynomial of log-rate, compared over
    the overlapping log-rate interval. Needs ≥ 4 points per curve.
    """
    a, b = _curve(rate_a, dist_a, "A"), _curve(rate_b, dist_b, "B")
    return _mean_gap(np.log(a.rate), a.distortion, np.log(b.rate), b.distortion, "rate")
