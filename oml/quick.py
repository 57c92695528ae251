"""Quick online adaptation: one Gauss–Newton step on the last three λ^k, scored on the exact decoder.

The paper's search (:mod:`oml.adapt`) pays a decoder pass for every step-size probe and a
backward pass for every accepted step: 5 iterations cost 6–9 times the plain encoding. Here
the distortion is modelled as quadratic in ``u_k = ln λ^k``, which it nearly is over the short
distances λ* moves (one Gauss–Newton step from λ_t on a whole tile gains what 20 iterations of
the paper's search gain), and everything is computed from what the plain decoding of the tile
already produced (:meth:`~oml.models.synthesis.ModulatedSynthesis.block_outputs`)::

    c_{K−2} ─► m_{K−2}(λ^{K−2}) ─► block_{K−1} ─► m_{K−1}(λ^{K−1}) ─► block_K ─► m_K(λ^K) ─► x̂
    (kept)                                        (kept: c_{K−1})               (kept: c_K)

- ``∂x̂/∂u_K`` is x̂ times the last modulator's log-derivative: no decoder pass.
- ``∂x̂/∂u_{K−1}`` runs the last block on c_{K−1}; when that block is CompressAI's 5×5 deconv
  (linear), only on the 16 channels the modulator's derivative moves most, the mean of the
  derivative acting on c_K for free.
- ``∂x̂/∂u_{K−2}`` needs block_{K−1}, the decoder's dearest layer: it is a finite difference on
  small windows covering a fifth of the tile, drawn where the other columns and the residual
  are large and weighted so that their sums estimate the tile's; it enters the step only
  through its part orthogonal to the other two columns, measured on the windows.

λ^1 … λ^{K−3} stay at λ_t: moving λ^{K−3} would make the exact pass below cost a full decoding
and adds little (docs/RESULTS.md). The step is then decoded exactly, with the decoder's own
operations from the kept tensor on (from c_{K−2}, or from c_{K−1} when the predicted gain of
λ^{K−2} is small), and when that output is no better, the best λ^K alone (a closed form on
c_K, exact) is tried. The caller keeps the result only if it beats λ_t on the 8-bit output.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from oml.adapt import _round16, distortion, to_pixels
from oml.models.synthesis import ModulatedSynthesis

# Finite-difference step in ln λ, and the largest step the search takes in ln λ (λ* stays near λ_t,
# where the decoder was trained and the quadratic model holds).
DELTA = 0.05
MAX_STEP = 0.5
# λ^{K−2} is moved (at the cost of block_{K−1} over the whole tile) only when the model predicts it
# adds at least this share of the tile's gain.
SHARE_K2 = 0.1
# λ^{K−2}'s column is measured on AREA of the tile's pixels, in square windows of side WINDOW
# (output pixels), each decoded with MARGIN latent pixels of context around it.
AREA = 0.2
WINDOW = 64
MARGIN = 2


class QuickResult(NamedTuple):
    """λ* ``(K,)`` (float16 values) and the decoder's output with it, ``(1, 3, H, W)`` (uncropped,
    not clamped: exactly what a full decoding of λ* gives); λ_t and the plain output when nothing
    found is better."""

    lambdas: Tensor
    output: Tensor


def _windows(j3: Tensor, rho: Tensor, stride: int, area: float, size: int) -> list[tuple[int, int, int, float]]:
    """Windows ``(top, left, side, weight)`` on which to measure λ^{K−2}'s column: about ``area`` of the
    tile, drawn from its grid of ``side``² squares (multiples of ``stride``) with odds ∝ the fourth
    root of the energy of λ^{K−1}'s column times that of the residual in each (where the statistics
    are made), by systematic sampling (deterministic). ``weight`` (1 / odds / draws, times the number
    of draws that fell on it) makes the sums over the windows estimate the sums over the tile."""
    height, width = rho.shape[-2:]
    side = min(size, height // stride * stride, width // stride * stride)
    if side < stride:
        return []
    def energy(t: Tensor) -> Tensor:
        return F.avg_pool2d(t.pow(2).sum(1, keepdim=True), side, side)[0, 0]

    odds = (energy(j3) * energy(rho)).pow(0.25).flatten().double().cpu()
    if not bool(odds.sum() > 0):
        odds = torch.ones_like(odds)
    odds = odds / odds.sum()
    draws = max(1, round(area * height * width / side**2))
    picks = torch.searchsorted(odds.cumsum(0), (torch.arange(draws, dtype=torch.float64) + 0.5) / draws).clamp_max(len(odds) - 1)
    columns = (width - side) // side + 1
    out = []
    for index, times in zip(*torch.unique(picks, return_counts=True)):
        i = int(index)
        out.append((i // columns * side, i % columns * side, side, float(times) / (float(odds[i]) * draws)))
    return out


def _log_slope(synthesis: ModulatedSynthesis, k: int, lam: Tensor, coded: Tensor) -> tuple[Tensor, Tensor, float]:
    """Modulator k's scales at λ ``(C,)``, their derivative in ln λ^k ``(C,)`` (finite difference) and the
    step in ln λ it used (after float16 rounding)."""
    up = _round16(lam * math.exp(DELTA))
    base, moved = synthesis.scales(k, lam, coded)[0], synthesis.scales(k, up, coded)[0]
    step = math.log(float(up) / float(lam))
    return base, (moved / base - 1) / step, step


def _last_column(block: nn.Module, c_last: Tensor, b_out: Tensor, scale: Tensor, slope: Tensor, topk: int) -> Tensor:
    """``block(c ⊙ scale ⊙ (1 + ε·slope)) − block(c ⊙ scale)`` per unit ε: the last block's response to
    moving its modulator's λ. For a transposed convolution (linear) the mean slope is a gain on
    ``b_out`` minus its bias, and only the ``topk`` channels furthest from the mean are convolved."""
    if _is_deconv(block) and topk < c_last.shape[1]:
        bias = block.bias[None, :, None, None] if block.bias is not None else 0.0
        energy = scale * c_last[0, :, ::4, ::4].flatten(1).norm(dim=1) * block.weight.flatten(1).norm(dim=1)
        mean = float((slope * energy**2).sum() / (energy**2).sum().clamp_min(1e-30))
        top = ((slope - mean).abs() * energy).topk(topk).indices
        coef = (scale[top] * (slope[top] - mean))[None, :, None, None]
        part = F.pixel_shuffle(F.conv2d(c_last[:, top] * coef, _polyphase(block.weight[top]), None, padding=1), 2)
        return mean * (b_out - bias) + part
    return (block(c_last * (scale * (1 + DELTA * slope))[None, :, None, None]) - b_out) / DELTA


def _residual(metric: str, x_hat: Tensor, x: Tensor) -> Tensor:
    """The image the Gauss–Newton step fits: ``x − x̂`` for MSE. For MS-SSIM, minus half its gradient
    in x̂, scaled by ``n·MSE/(1 − MS-SSIM)`` so that the step has MSE's curvature at MSE's scale."""
    if metric == "psnr":
        return x - x_hat
    with torch.enable_grad():
        leaf = x_hat.detach().requires_grad_(True)
        loss = distortion(metric, leaf.clamp(0, 1), x).sum()
        (grad,) = torch.autograd.grad(loss, leaf)
    mse = (x_hat - x).pow(2).mean()
    return -0.5 * grad * x_hat.numel() * mse / loss.detach().clamp_min(1e-12)


@torch.no_grad()
def adapt_quick(
    synthesis: ModulatedSynthesis,
    kept: list[Tensor],
    x: Tensor,
    lmbda_t: float,
    metric: str = "psnr",
    area: float | None = None,
    topk: int = 16,
) -> QuickResult:
    """λ* for one tile by one Gauss–Newton step on λ^{K−2}, λ^{K−1}, λ^K, decoded exactly.

    Args:
        synthesis: the modulated decoder (not modified).
        kept: the tile's plain decoding, :meth:`ModulatedSynthesis.block_outputs`' list (batch of
            one, all K blocks' outputs at λ_t).
        x: the original tile in [0, 1], ``(1, 3, H, W)`` (the decoder output is cropped to it).
        lmbda_t: the coded λ.
        metric: ``psnr`` or ``ms-ssim``.
        area: share of the tile's pixels on which λ^{K−2}'s column is measured (default ``AREA``).
        topk: channels the last block is run on for λ^{K−1}'s column.
    """
    num = synthesis.num_lambdas
    if num < 3 or len(kept) != num or kept[0].shape[0] != 1:
        raise ValueError(f"quick adaptation needs the K >= 3 block outputs of one tile, got {len(kept)} for K={num}")
    height, width = x.shape[-2:]
    device = x.device
    coded = torch.tensor([lmbda_t], device=device)
    lam = _round16(coded)
    k2, k3, k4 = num - 3, num - 2, num - 1  # 0-based modulators of λ^{K−2}, λ^{K−1}, λ^K
    c2, c3, c4 = kept[k2], kept[k3], kept[k4]
    _, _, step2 = _log_slope(synthesis, k2, lam, coded)
    s3, v3, _ = _log_slope(synthesis, k3, lam, coded)
    s4, v4, _ = _log_slope(synthesis, k4, lam, coded)
    plain_full = c4 * s4[None, :, None, None]
    plain = plain_full[..., :height, :width]
    mask = ((plain > 0) & (plain < 1)).to(plain.dtype)  # clipped pixels do not move
    rho = _residual(metric, plain, x) * mask
    j4 = plain * v4[None, :, None, None] * mask
    j3 = (_last_column(synthesis.blocks[k4], c3, c4, s3, v3, topk) * s4[None, :, None, None])[..., :height, :width] * mask
    cols = torch.stack([j3, j4, rho]).flatten(1)
    gram = (cols @ cols.T).double().cpu()
    d34 = _solve(gram[:2, :2], gram[:2, 2])
    gain34 = float(gram[:2, 2] @ d34)
    moved = synthesis.scales(k2, _round16(lam * math.exp(DELTA)), coded)[:, :, None, None]
    d2, gain2, fit = _k2_step(synthesis, kept, x, mask, rho, j3, j4, moved, step2, s3, s4, AREA if area is None else area)
    u = math.log(float(lam))
    step = torch.zeros(num, dtype=torch.float64)
    if gain2 >= SHARE_K2 * (gain2 + gain34) and gain2 > 0:
        step[k2], step[k3:] = d2, d34 - d2 * fit
        start = k2
    else:
        step[k3:] = d34
        start = k3
    step = step.clamp(-MAX_STEP, MAX_STEP)
    candidate = _round16(torch.exp(u + step).float().to(device))
    best = QuickResult(lam.expand(num).clone(), plain_full)
    d_best = _score(metric, plain, x)
    if not torch.equal(candidate, best.lambdas):
        out = synthesis.tail(kept[start], candidate[None], coded, start)
        if _score(metric, out[..., :height, :width], x) < d_best:
            return QuickResult(candidate, out)
    # The step did not pay: the best λ^K alone, exact on c_K at the cost of one product.
    candidate = best.lambdas.clone()
    candidate[k4] = _best_last(synthesis, k4, c4[..., :height, :width], x, mask, lam, coded)
    out = synthesis.tail(c4, candidate[None], coded, k4)
    if _score(metric, out[..., :height, :width], x) < d_best:
        return QuickResult(candidate, out)
    return best


def _k2_step(
    synthesis: ModulatedSynthesis, kept: list[Tensor], x: Tensor, mask: Tensor, rho: Tensor, j3: Tensor, j4: Tensor,
    moved: Tensor, step: float, s3: Tensor, s4: Tensor, area: float,
) -> tuple[float, float, Tensor]:
    """λ^{K−2}'s step in ln λ, its predicted gain (sum of squares over the tile) and its regression on
    the columns of λ^{K−1}, λ^K (the part of their step it stands for), from a finite difference on
    windows: block_{K−1} and block_K run on all windows as one batch, each with MARGIN latent pixels
    of context (zeros beyond the tile, as in a full decoding)."""
    num = synthesis.num_lambdas
    k3, k4 = num - 2, num - 1
    c2, c4 = kept[num - 3], kept[k4]
    height, width = x.shape[-2:]
    stride = max(1, c4.shape[-1] // c2.shape[-1])
    windows = _windows(j3, rho, stride, area, WINDOW)
    if not windows:
        return 0.0, 0.0, torch.zeros(2, dtype=torch.float64)
    m, side = MARGIN, windows[0][2]
    cs = side // stride
    padded = F.pad(c2, (m, m, m, m))
    inside = F.pad(torch.ones_like(c2[:, :1]), (m, m, m, m))
    crops = torch.cat([padded[..., t // stride : t // stride + cs + 2 * m, l // stride : l // stride + cs + 2 * m] for t, l, _, _ in windows])
    valid = torch.cat([inside[..., t // stride : t // stride + cs + 2 * m, l // stride : l // stride + cs + 2 * m] for t, l, _, _ in windows])
    h = synthesis.blocks[k3](crops * moved)
    h = h * F.interpolate(valid, size=h.shape[-2:], mode="nearest") * s3[None, :, None, None]
    out = _fast(synthesis.blocks[k4])(h) * s4[None, :, None, None]
    edge = m * stride
    out = out[..., edge : edge + side, edge : edge + side]
    plain = c4 * s4[None, :, None, None]

    def cut(t: Tensor) -> Tensor:
        return torch.cat([t[..., y : y + side, x0 : x0 + side] for y, x0, _, _ in windows])

    window_mask = cut(mask)
    j2 = (out - cut(plain)) / step * window_mask
    cols = torch.stack([j2, cut(j3), cut(j4), cut(rho)], 1).flatten(2)  # (windows, 4, pixels)
    weights = torch.tensor([w for _, _, _, w in windows], dtype=cols.dtype, device=cols.device)
    gram = torch.einsum("n,nip,njp->ij", weights, cols, cols).double().cpu()
    fit = _solve(gram[1:3, 1:3], gram[1:3, 0])
    ee = float(gram[0, 0] - fit @ gram[1:3, 0])
    er = float(gram[0, 3] - fit @ gram[1:3, 3])
    if ee <= 1e-12 * float(gram[0, 0]) or ee <= 0:
        return 0.0, 0.0, fit
    return er / ee, er * er / ee, fit


def _is_deconv(block: nn.Module) -> bool:
    """CompressAI's ``deconv``: a transposed convolution, 5×5, stride 2, which doubles the size."""
    return (
        isinstance(block, nn.ConvTranspose2d) and block.groups == 1 and block.kernel_size == (5, 5) and block.stride == (2, 2)
        and block.padding == (2, 2) and block.output_padding == (1, 1) and block.dilation == (1, 1)
    )


def _polyphase(weight: Tensor) -> Tensor:
    """The 3×3 convolution ``(4·out, in, 3, 3)`` that, followed by a pixel shuffle of 2, computes the
    5×5 stride-2 transposed convolution of ``weight`` ``(in, out, 5, 5)`` (oneDNN runs it faster when
    ``out`` is small). Used for the search's estimates only, never for an output that is kept."""
    cin, cout = weight.shape[:2]
    kernel = weight.new_zeros(cout, 2, 2, cin, 3, 3)
    for a in range(2):
        for b in range(2):
            for dy in (-1, 0, 1):
                for dx in (-1, 0, 1):
                    ky, kx = a + 2 - 2 * dy, b + 2 - 2 * dx
                    if ky < 5 and kx < 5:
                        kernel[:, a, b, :, dy + 1, dx + 1] = weight[:, :, ky, kx].T
    return kernel.reshape(4 * cout, cin, 3, 3)


def _fast(block: nn.Module):
    """``block``, or its polyphase form when it is a deconv with few output channels."""
    if not _is_deconv(block) or block.out_channels > 16:
        return block
    kernel = _polyphase(block.weight)
    bias = block.bias.repeat_interleave(4) if block.bias is not None else None
    return lambda t: F.pixel_shuffle(F.conv2d(t, kernel, bias, padding=1), 2)


def _solve(a: Tensor, b: Tensor) -> Tensor:
    """``a⁻¹ b`` for a small Gram matrix, regularised so that a column of zeros (a fully clipped tile)
    gives a zero step instead of an error."""
    return torch.linalg.solve(a + torch.diag(1e-9 * torch.diag(a) + 1e-30), b)


def _score(metric: str, x_hat: Tensor, x: Tensor) -> float:
    """The decoder's distortion on its 8-bit output; +inf when it is not finite."""
    d = float(distortion(metric, to_pixels(x_hat), x)[0])
    return d if math.isfinite(d) else math.inf


def _best_last(synthesis: ModulatedSynthesis, k: int, c_last: Tensor, x: Tensor, mask: Tensor, lam: Tensor, coded: Tensor) -> Tensor:
    """The λ^K (float16 grid over ±0.5 in ln λ) whose channel gains best fit ``c_last`` to ``x`` in MSE
    (closed form: x̂ = s(λ^K) ⊙ c_last)."""
    bb = (c_last * c_last * mask).sum((0, 2, 3))
    bx = (c_last * x * mask).sum((0, 2, 3))
    grid = _round16(lam * torch.exp(torch.linspace(-MAX_STEP, MAX_STEP, 101, device=lam.device)))
    scales = synthesis.scales(k, grid, coded.expand_as(grid))
    cost = (scales**2 * bb - 2 * scales * bx).sum(1)
    return grid[int(cost.argmin())]
