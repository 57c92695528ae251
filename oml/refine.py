"""Latent refinement: per tile, gradient descent on the latents y and z under the frozen model.

The analysis transform is amortised: it maps every image to a latent in one pass and misses the
latent each particular image would code best. With the entropy model and the decoder frozen, the
encoder can search for it (Campos et al. 2019; Yang, Bamler & Mandt 2020)::

    min over y, z of   λ_t · 255² · D(x, g_s(ŷ)) + bits(ŷ | ẑ) / pixels + bits(ẑ) / pixels

starting from ``y = g_a(x)``, ``z = h_a(y)``. Rounding has no gradient, so the loss is taken
through a surrogate of it (:data:`SURROGATES`):

- ``sga``: stochastic Gumbel annealing (Yang et al. 2020). Each value is rounded down or up at
  random, with odds that favour the nearer integer more and more as the temperature falls, and
  a Gumbel-softmax relaxation of that choice carries the gradient. At the end the choice is the
  nearest integer, so the optimised loss meets the coded one.
- ``ste``: hard rounding forward, identity backward.
- ``noise``: uniform noise in the rate, straight-through rounding in the decoder (how the model was
  trained).

Each iteration also scores the hard-rounded latent (the loss the file will pay, up to the scale
table's buckets and the 8-bit output) every ``check_every`` iterations, and the best one seen is
returned, so a run never ends on a worse point than it passed through.

The decoder never changes: a refined tile decodes with the same decoder as any other. Which of the
refined and the unrefined latent a tile keeps is decided by :mod:`oml.codec` on the real bytes
and the 8-bit output.

References:

- J. Campos, S. Meierhans, A. Djelouah, C. Schroers, "Content Adaptive Optimization for
  Neural Image Compression", CVPR Workshops 2019 (arXiv:1906.01223).
- Y. Yang, R. Bamler, S. Mandt, "Improving Inference for Neural Image Compression",
  NeurIPS 2020 (arXiv:2006.04240).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor, nn

from oml.adapt import distortion
from oml.models.checkerboard import anchor_mask
from oml.names import METRICS

SURROGATES = ("sga", "ste", "noise")


@dataclass(frozen=True)
class RefineConfig:
    """``iterations`` steps of Adam (0: no refinement) at learning rate ``lr`` with ``surrogate``.

    The SGA temperature falls geometrically from ``tau_start`` to ``tau_end`` over the run, and the
    learning rate follows a cosine from ``lr`` to ``lr / 10``: both scale with ``iterations``, so a
    short run anneals completely too.
    """

    iterations: int = 0
    surrogate: str = "sga"
    lr: float = 0.02
    tau_start: float = 1.0
    tau_end: float = 0.05
    check_every: int = 5
    seed: int = 0

    def __post_init__(self) -> None:
        if self.iterations < 0:
            raise ValueError(f"refine iterations must be >= 0, got {self.iterations}")
        if self.surrogate not in SURROGATES:
            raise ValueError(f"surrogate must be one of {SURROGATES}, got {self.surrogate!r}")
        if not self.lr > 0 or not 0 < self.tau_end <= self.tau_start:
            raise ValueError(f"bad schedule: lr={self.lr}, tau {self.tau_start}→{self.tau_end}")


class Trace(NamedTuple):
    """Hard-rounded losses ``(checks, B)``: row 0 at the unrefined latent, then every check; per tile,
    the iteration whose point was returned."""

    iterations: list[int]
    losses: Tensor
    best_iteration: list[int]


def soft_round(v: Tensor, tau: float, generator: torch.Generator | None = None) -> Tensor:
    """SGA's relaxed rounding: floor or ceil with odds ∝ exp(−atanh(distance)/τ), Gumbel-softmax relaxed."""
    lower = torch.floor(v).detach()
    r = (v - lower).clamp(1e-5, 1 - 1e-5)
    logits = torch.stack((-torch.atanh(r) / tau, -torch.atanh(1 - r) / tau), -1)
    u = torch.rand(logits.shape, generator=generator, device=v.device, dtype=v.dtype).clamp(1e-10, 1 - 1e-10)
    gumbel = -torch.log(-torch.log(u))
    weights = torch.softmax((logits + gumbel) / tau, -1)
    return lower + weights[..., 1]


def ste_round(v: Tensor) -> Tensor:
    return v + (torch.round(v) - v).detach()


class _Quantiser:
    """The rounding of one iteration: ``sga`` with temperature ``tau``, ``ste``, ``noise`` or ``hard`` (exact)."""

    def __init__(self, mode: str, tau: float = 0.0, generator: torch.Generator | None = None) -> None:
        self.mode, self.tau, self.generator = mode, tau, generator

    def for_rate(self, v: Tensor) -> Tensor:
        if self.mode == "sga":
            return soft_round(v, self.tau, self.generator)
        if self.mode == "noise":
            return v + torch.rand(v.shape, generator=self.generator, dtype=v.dtype, device=v.device) - 0.5
        if self.mode == "ste":
            return ste_round(v)
        return torch.round(v)

    def for_decoder(self, v: Tensor, rate_value: Tensor) -> Tensor:
        """The decoder sees SGA's own sample, a straight-through rounding otherwise."""
        if self.mode == "sga":
            return rate_value
        if self.mode == "hard":
            return torch.round(v)
        return ste_round(v)


HARD = _Quantiser("hard")


def _bits_z(eb: nn.Module, z_tilde: Tensor) -> Tensor:
    """Bits of ẑ per tile ``(B,)`` under the factorised prior (which takes ``(C, 1, n)``)."""
    b, c = z_tilde.shape[:2]
    likelihood, _, _ = eb._likelihood(z_tilde.transpose(0, 1).reshape(c, 1, -1))
    return -torch.log2(likelihood.clamp_min(1e-9)).view(c, b, -1).sum((0, 2))


def _bits_y(gc: nn.Module, y_tilde: Tensor, scales: Tensor, means: Tensor | None) -> Tensor:
    return -torch.log2(gc._likelihood(y_tilde, scales, means=means).clamp_min(1e-9)).flatten(1).sum(1)


def distortion_weight(metric: str, x_hat: Tensor, x: Tensor) -> Tensor:
    """Per tile ``(B,)``, what one unit of distortion costs relative to λ_t: 255² for ``psnr``; for
    ``ms-ssim`` the weight that makes ``weight · (1 − MS-SSIM)`` equal ``255² · MSE`` at ``x_hat``
    (the trade-off starts where the model's own, MSE-trained one is)."""
    mse = distortion("psnr", x_hat, x)
    if metric == "psnr":
        return torch.full_like(mse, 255.0**2)
    return 255.0**2 * mse / distortion(metric, x_hat, x).clamp_min(1e-8)


def rd_cost(metric: str, weight: Tensor, lmbda_t: float, x_hat: Tensor, x: Tensor, bits: Tensor) -> Tensor:
    """``λ_t · weight · D(x, x̂) + bits / pixels`` per tile ``(B,)``: what refinement lowers, and what the
    codec compares on the real bytes and the 8-bit output."""
    return lmbda_t * weight * distortion(metric, x_hat, x) + bits / (x.shape[-2] * x.shape[-1])


class Objective:
    """The RD loss ``(B,)`` of tiles' latents under ``model``'s frozen entropy model and decoder.

    ``x``: equally sized tiles ``(B,3,h,w)`` in [0, 1] (unpadded); the latents cover their padded
    size. ``weight``: :func:`distortion_weight` per tile.
    """

    def __init__(self, model, quality: int, lmbda_t: float, x: Tensor, metric: str, weight: Tensor) -> None:
        if metric not in METRICS:
            raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
        self.model, self.lmbda_t, self.x, self.metric, self.weight = model, lmbda_t, x, metric, weight.to(x.device)
        self.m = model._encoder(quality)
        self.kind = model.kind
        self.lambdas = torch.full((x.shape[0], model.num_lambdas), lmbda_t, device=x.device)
        self.medians = self.m.entropy_bottleneck.quantiles[:, 0, 1].detach().view(1, -1, 1, 1)

    def hyper(self, y: Tensor) -> Tensor:
        """z = h_a(y) (of |y| for the scale hyperprior), the start of the search."""
        return self.m.h_a(torch.abs(y) if self.kind == "scale" else y)

    def loss(self, y: Tensor, z: Tensor, q: _Quantiser) -> Tensor:
        m = self.m
        z_rate = q.for_rate(z - self.medians) + self.medians
        z_hat = q.for_decoder(z - self.medians, z_rate - self.medians) + self.medians
        params = m.h_s(z_hat)
        if self.kind == "scale":
            scales, means = params, None
            y_rate = q.for_rate(y)
            y_hat = q.for_decoder(y, y_rate)
        elif self.kind == "mean_scale":
            scales, means = params.chunk(2, 1)
            y_rate = q.for_rate(y - means) + means
            y_hat = q.for_decoder(y - means, y_rate - means) + means
        elif self.kind == "checkerboard":  # anchors first; their quantised values feed the rest's context
            anchors = anchor_mask(y.shape[2], y.shape[3], y.device)
            halves = []
            ctx = torch.zeros_like(params)
            for _ in range(2):
                scales, means = m.context.refine(params, ctx).chunk(2, 1)
                y_rate = q.for_rate(y - means) + means
                y_hat = q.for_decoder(y - means, y_rate - means) + means
                halves.append((scales, means, y_rate, y_hat))
                ctx = m.context.context_prediction(y_hat * anchors)
            scales, means, y_rate, y_hat = (a * anchors + b * (1 - anchors) for a, b in zip(*halves))
        else:  # autoregressive: the context sees the rounded latent (CompressAI's training pass)
            y_rate = q.for_rate(y)
            y_hat = q.for_decoder(y, y_rate)
            ctx = m.context_prediction(y_hat)
            scales, means = m.entropy_parameters(torch.cat((params, ctx), 1)).chunk(2, 1)
        bits = _bits_y(m.gaussian_conditional, y_rate, scales, means) + _bits_z(m.entropy_bottleneck, z_rate)
        x_hat = self.model.synthesize(y_hat, self.lambdas, self.lmbda_t)[..., : self.x.shape[-2], : self.x.shape[-1]]
        return rd_cost(self.metric, self.weight, self.lmbda_t, x_hat.clamp(0, 1), self.x, bits)


def refine(model, quality: int, lmbda_t: float, x: Tensor, y: Tensor, cfg: RefineConfig, metric: str = "psnr", weight: Tensor | None = None) -> tuple[Tensor, Tensor, Trace]:
    """Refined (y, z) for equally sized tiles, from the analysis output ``y`` ``(B,M,h,w)``.

    ``x``: the tiles ``(B,3,H,W)`` in [0,1], unpadded; ``weight``: :func:`distortion_weight` per
    tile (default: that of ``psnr``). Tiles are independent (Adam is elementwise), so a batch
    gives each tile what a run of its own would. Returns, per tile, the best hard-rounded point
    seen (possibly the starting one) and the trace of hard losses.
    """
    if weight is None:
        weight = torch.full((x.shape[0],), 255.0**2)
    objective = Objective(model, quality, lmbda_t, x, metric, weight)
    frozen = [p for p in model.parameters() if p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    try:
        return _run(objective, y, cfg)
    finally:
        for p in frozen:
            p.requires_grad_(True)


def _run(objective: Objective, y0: Tensor, cfg: RefineConfig) -> tuple[Tensor, Tensor, Trace]:
    with torch.no_grad():
        z0 = objective.hyper(y0)
        best_loss = objective.loss(y0, z0, HARD)
    best_y, best_z = y0.detach().clone(), z0.detach().clone()
    best_at = torch.zeros(y0.shape[0], dtype=torch.long)
    iterations, losses = [0], [best_loss.cpu()]
    y, z = y0.detach().clone().requires_grad_(True), z0.detach().clone().requires_grad_(True)
    opt = torch.optim.Adam([y, z], lr=cfg.lr)
    gen = torch.Generator(device=y0.device).manual_seed(cfg.seed)
    n = cfg.iterations
    for t in range(1, n + 1):
        frac = (t - 1) / max(n - 1, 1)
        for group in opt.param_groups:
            group["lr"] = cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))
        tau = cfg.tau_start * (cfg.tau_end / cfg.tau_start) ** frac
        opt.zero_grad(set_to_none=True)
        objective.loss(y, z, _Quantiser(cfg.surrogate, tau, gen)).sum().backward()
        opt.step()
        if t % cfg.check_every == 0 or t == n:
            with torch.no_grad():
                value = objective.loss(y, z, HARD)
                better = value < best_loss
                best_loss = torch.where(better, value, best_loss)
                best_y[better], best_z[better] = y.detach()[better], z.detach()[better]
                best_at[better.cpu()] = t
            iterations.append(t)
            losses.append(value.cpu())
    return best_y, best_z, Trace(iterations, torch.stack(losses), best_at.tolist())
