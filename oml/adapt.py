"""Online meta adaptation of the decoder's λ vector (paper Eq. 5 and §5.2).

For one tile the quantised latent ŷ is fixed (its bits never change). Starting
from ``λ^1 = … = λ^K = λ_t`` the K values are moved by gradient steps on the
decoder's distortion against the original tile::

    λ ← λ − γ · ∂D(x, g_s(ŷ; λ)) / ∂λ                      (Eq. 5)

Step size (§5.2): the first iteration tries every γ in
``{0.01, 0.1, 1, 10, 100, 1000}`` and keeps the best; afterwards γ is halved
whenever the distortion does not improve. Every candidate is scored as the
decoder will see it: λ rounded to float16 and the reconstruction rounded to
8 bits. A candidate is accepted only if it lowers that score, so the current λ
is always the best seen and rejected steps reuse its gradient.

Faster than the paper's recipe: the tiles of a batch and the six step-size
probes run in one batched forward pass; the first decoding block, which no
adapted λ^k touches, runs once (:meth:`ModulatedSynthesis.prefix`).
Nothing in the model is changed: the λ vector is the only thing optimised.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor

from oml.models.synthesis import ModulatedSynthesis

GAMMAS = (0.01, 0.1, 1.0, 10.0, 100.0, 1000.0)
METRICS = ("psnr", "ms-ssim")
# λ is kept inside this range so log λ stays finite and float16 keeps precision.
LAMBDA_MIN, LAMBDA_MAX = 1e-4, 1.0


@dataclass(frozen=True)
class AdaptConfig:
    """``steps`` iterations (0: no adaptation) for each metric in ``metrics``."""

    steps: int = 0
    metrics: tuple[str, ...] = ("psnr",)
    gammas: tuple[float, ...] = GAMMAS

    def __post_init__(self) -> None:
        if self.steps < 0:
            raise ValueError(f"steps must be >= 0, got {self.steps}")
        bad = [m for m in self.metrics if m not in METRICS]
        if bad or not self.metrics:
            raise ValueError(f"metrics must be some of {METRICS}, got {self.metrics}")


class AdaptResult(NamedTuple):
    """Per tile: λ* ``(B,K)`` as float16, distortion at λ_t and at λ* ``(B,)``."""

    lambdas: Tensor
    distortion_before: Tensor
    distortion_after: Tensor


def to_pixels(x_hat: Tensor) -> Tensor:
    """The decoder's 8-bit output, as floats in [0, 1]."""
    return (x_hat.clamp(0, 1) * 255.0).round() / 255.0


def distortion(metric: str, x_hat: Tensor, x: Tensor) -> Tensor:
    """Per-image distortion ``(B,)``: MSE for ``psnr``, 1 − MS-SSIM for ``ms-ssim``."""
    if metric == "psnr":
        return (x_hat - x).pow(2).flatten(1).mean(1)
    if metric == "ms-ssim":
        from oml.metrics import ms_ssim

        return 1.0 - ms_ssim(x_hat, x)
    raise ValueError(f"unknown metric {metric!r}; expected one of {METRICS}")


def _round16(lambdas: Tensor) -> Tensor:
    return lambdas.clamp(LAMBDA_MIN, LAMBDA_MAX).half().float()


def _evaluate(synthesis: ModulatedSynthesis, h: Tensor, x: Tensor, lambdas: Tensor, metric: str) -> tuple[Tensor, Tensor]:
    """Score ``(B,)`` of the 8-bit reconstruction and its gradient ``(B,K)`` w.r.t. λ."""
    lam = lambdas.detach().requires_grad_(True)
    with torch.enable_grad():
        x_hat = synthesis.suffix(h, lam)[..., : x.shape[-2], : x.shape[-1]]
        loss = distortion(metric, x_hat.clamp(0, 1), x)
        (grad,) = torch.autograd.grad(loss.sum(), lam)
    with torch.no_grad():
        score = distortion(metric, to_pixels(x_hat), x)
    return score.detach(), grad


def adapt(
    synthesis: ModulatedSynthesis,
    h: Tensor,
    x: Tensor,
    lmbda_t: float,
    steps: int,
    metric: str = "psnr",
    gammas: tuple[float, ...] = GAMMAS,
) -> AdaptResult:
    """Search λ* for a batch of equally sized tiles.

    Args:
        synthesis: the modulated decoder (not modified).
        h: ``synthesis.prefix(ŷ, λ_t)`` for the tiles, ``(B, C, h, w)``.
        x: the original tiles in [0, 1], ``(B, 3, H, W)`` (unpadded; the decoder
            output is cropped to this size).
        lmbda_t: the coded λ, the starting point of every λ^k.
        steps: number of iterations N.
        metric: ``psnr`` (MSE) or ``ms-ssim`` (1 − MS-SSIM).
    """
    batch, k = h.shape[0], synthesis.num_lambdas
    current = _round16(torch.full((batch, k), float(lmbda_t), device=h.device))
    d_current, grad = _evaluate(synthesis, h, x, current, metric)
    d_start = d_current.clone()
    gamma = torch.zeros(batch, device=h.device)
    probes = torch.tensor(gammas, device=h.device)
    for it in range(steps):
        if it == 0:
            cands = _round16(current[:, None, :] - probes[None, :, None] * grad[:, None, :])
            n = len(gammas)
            d_all, g_all = _evaluate(
                synthesis, h.repeat_interleave(n, 0), x.repeat_interleave(n, 0), cands.reshape(batch * n, k), metric
            )
            best = d_all.view(batch, n).argmin(1)
            rows = torch.arange(batch, device=h.device)
            gamma = probes[best]
            cand, d_cand, g_cand = cands[rows, best], d_all.view(batch, n)[rows, best], g_all.view(batch, n, k)[rows, best]
        else:
            cand = _round16(current - gamma[:, None] * grad)
            d_cand, g_cand = _evaluate(synthesis, h, x, cand, metric)
        better = d_cand < d_current
        current = torch.where(better[:, None], cand, current)
        d_current = torch.where(better, d_cand, d_current)
        grad = torch.where(better[:, None], g_cand, grad)
        gamma = torch.where(better, gamma, gamma / 2)
    return AdaptResult(current.half(), d_start, d_current)
