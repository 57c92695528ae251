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
is always the best seen and rejected steps reuse its gradient. A candidate whose
decoder output is not finite scores +inf.

Faster than the paper's recipe: the first decoding block, which no adapted
λ^k touches, runs once (:meth:`ModulatedSynthesis.prefix`); the step-size
probes are scored without a backward pass, and only an accepted step pays for
a gradient; tiles of equal size can be adapted as one batch, and on a GPU the
six probes run as one batched forward pass.
Nothing in the model is changed: the λ vector is the only thing optimised.

References:

- W. Jiang, W. Wang, S. Li, S. Liu, "Online Meta Adaptation for Variable-Rate Learned
  Image Compression", arXiv preprint, 16 Nov 2021.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor

from oml.models.synthesis import ModulatedSynthesis
from oml.names import METRICS

GAMMAS = (0.01, 0.1, 1.0, 10.0, 100.0, 1000.0)
# λ is kept inside this range so log λ stays finite and float16 keeps precision.
LAMBDA_MIN, LAMBDA_MAX = 1e-4, 1.0


@dataclass(frozen=True)
class AdaptConfig:
    """Adaptation for each metric in ``metrics``: ``steps`` iterations of the paper's search (0: none),
    or, with ``quick``, one Gauss–Newton step on the last three λ^k (:mod:`oml.quick`)."""

    steps: int = 0
    metrics: tuple[str, ...] = ("psnr",)
    gammas: tuple[float, ...] = GAMMAS
    quick: bool = False

    def __post_init__(self) -> None:
        if self.steps < 0:
            raise ValueError(f"steps must be >= 0, got {self.steps}")
        if self.quick and self.steps:
            raise ValueError("quick adaptation takes no steps: give steps or quick, not both")
        bad = [m for m in self.metrics if m not in METRICS]
        if bad or not self.metrics:
            raise ValueError(f"metrics must be some of {METRICS}, got {self.metrics}")

    @property
    def enabled(self) -> bool:
        """Whether λ* is searched at all (otherwise the file stores one ``plain`` set)."""
        return self.quick or self.steps > 0


class AdaptResult(NamedTuple):
    """Per tile: λ* ``(B,K)`` as float16, distortion at λ_t and at λ* ``(B,)``.

    ``history`` ``(N+1, B)`` is the best distortion after each iteration (row 0:
    at λ_t) and ``lambda_history`` ``(N+1, B, K)`` the matching λ*, so one run of
    N iterations also tells what every shorter run would have returned;
    ``seconds`` ``(N+1,)`` is the wall time spent when each row was reached.
    """

    lambdas: Tensor
    distortion_before: Tensor
    distortion_after: Tensor
    history: Tensor
    lambda_history: Tensor
    seconds: Tensor


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


class _Trial(NamedTuple):
    score: Tensor  # (B,) distortion of the 8-bit reconstruction
    loss: Tensor | None  # (B,) differentiable distortion, when a gradient may be wanted
    lambdas: Tensor  # (B, K) the λ leaf the loss depends on


def _trial(synthesis: ModulatedSynthesis, h: Tensor, x: Tensor, lambdas: Tensor, lmbda_t: Tensor, metric: str, graph: bool) -> _Trial:
    """Decode with ``lambdas`` ``(B,K)`` (coded λ_t ``(B,)``); keep the autograd graph only when ``graph``."""
    lam = lambdas.detach().requires_grad_(graph)
    with torch.set_grad_enabled(graph):
        x_hat = synthesis.suffix(h, lam, lmbda_t)[..., : x.shape[-2], : x.shape[-1]]
        loss = distortion(metric, x_hat.clamp(0, 1), x) if graph else None
    with torch.no_grad():
        # A λ far off the coding range can overflow the decoder (exp of a large offset times a
        # zero feature is NaN): such a candidate scores +inf, so it never wins the γ probe's argmin
        # (argmin would pick a NaN) and is never accepted.
        score = torch.nan_to_num(distortion(metric, to_pixels(x_hat), x), nan=float("inf"))
    return _Trial(score.detach(), loss, lam)


def _gradient(trial: _Trial) -> Tensor:
    (grad,) = torch.autograd.grad(trial.loss.sum(), trial.lambdas)
    return grad


def _probe_scores(synthesis: ModulatedSynthesis, h: Tensor, x: Tensor, cands: Tensor, lmbda_t: Tensor, metric: str, chunk: int) -> Tensor:
    """Scores ``(B, P)`` of P candidate λ vectors per tile, ``chunk`` probes per forward pass."""
    batch, probes, k = cands.shape
    scores = []
    for start in range(0, probes, chunk):
        part = cands[:, start : start + chunk]
        n = part.shape[1]
        trial = _trial(
            synthesis, h.repeat_interleave(n, 0), x.repeat_interleave(n, 0), part.reshape(batch * n, k), lmbda_t.repeat_interleave(n, 0), metric, graph=False
        )
        scores.append(trial.score.view(batch, n))
    return torch.cat(scores, 1)


def adapt(
    synthesis: ModulatedSynthesis,
    h: Tensor,
    x: Tensor,
    lmbda_t: float,
    steps: int,
    metric: str = "psnr",
    gammas: tuple[float, ...] = GAMMAS,
    probe_chunk: int | None = None,
    stop_early: bool = True,
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
        probe_chunk: step-size probes per forward pass; default all six on a
            GPU, one on a CPU (where a batch of six is slower than six passes).
        stop_early: stop once every remaining iteration is a no-op, filling
            the history as they would have (the result is identical): when
            the next candidate of every tile rounds to its current λ in
            float16, it cannot improve, so γ halves, and every later, smaller
            step rounds to the current λ too.

    Each iteration costs one forward pass, plus one backward pass when some
    tile accepted its step (rejected steps reuse the last gradient).
    """
    t0 = time.perf_counter()
    batch, k = h.shape[0], synthesis.num_lambdas
    chunk = probe_chunk or (len(gammas) if h.is_cuda else 1)
    current = _round16(torch.full((batch, k), float(lmbda_t), device=h.device))
    coded = torch.full((batch,), float(lmbda_t), device=h.device)
    start = _trial(synthesis, h, x, current, coded, metric, graph=True)
    d_current, grad = start.score, _gradient(start)
    gamma = torch.zeros(batch, device=h.device)
    probes = torch.tensor(gammas, device=h.device)
    history, lambda_history, seconds = [d_current], [current], [time.perf_counter() - t0]
    for it in range(steps):
        if it == 0:
            cands = _round16(current[:, None, :] - probes[None, :, None] * grad[:, None, :])
            best = _probe_scores(synthesis, h, x, cands, coded, metric, chunk).argmin(1)
            gamma = probes[best]
            cand = cands[torch.arange(batch, device=h.device), best]
        else:
            cand = _round16(current - gamma[:, None] * grad)
        trial = _trial(synthesis, h, x, cand, coded, metric, graph=it + 1 < steps)
        better = trial.score < d_current
        if better.any():
            current = torch.where(better[:, None], cand, current)
            d_current = torch.where(better, trial.score, d_current)
            if trial.loss is not None:
                grad = torch.where(better[:, None], _gradient(trial), grad)
        gamma = torch.where(better, gamma, gamma / 2)
        history.append(d_current)
        lambda_history.append(current)
        seconds.append(time.perf_counter() - t0)
        if stop_early and it + 1 < steps and torch.equal(_round16(current - gamma[:, None] * grad), current):
            left = steps - it - 1
            history.extend([d_current] * left)
            lambda_history.extend([current] * left)
            seconds.extend([seconds[-1]] * left)
            break
    return AdaptResult(
        current.half(), start.score, d_current, torch.stack(history), torch.stack(lambda_history).half(), torch.tensor(seconds)
    )
