"""A checkerboard context for a mean-scale hyperprior (He et al., CVPR 2021).

After: D. He, Y. Zheng, B. Sun, Y. Wang, H. Qin, "Checkerboard Context Model for
Efficient Learned Image Compression", CVPR 2021 (arXiv:2103.15306).

The latent's positions are split like a checkerboard. *Anchors* (``(h + w)`` even)
are coded first, with the hyperprior's parameters only; the other half is coded
second, with a context computed from the decoded anchors around it. Both halves
decode in one vectorised pass each (no position-by-position loop, unlike
Minnen 2018's raster-order context), so CPU decoding stays fast.

Here the context refines the hyperprior's parameters rather than replacing them::

    (σ, μ)' = (σ, μ) + entropy_parameters(cat((σ, μ), ctx))
    ctx     = context_prediction(ŷ · anchors)        (0 at the anchors themselves)

``entropy_parameters``' last layer starts at zero, so an untrained context codes
exactly as the hyperprior does, and it can be trained on a frozen model's
latents alone (the transforms never change, so every weight of the base model
is kept). Every layer is a convolution or a LeakyReLU, so the codec runs it in
exact integer arithmetic (:mod:`oml.models.exact`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from compressai.ops import quantize_ste
from torch import Tensor, nn

_KERNEL = 5


def anchor_mask(height: int, width: int, device=None) -> Tensor:
    """``(1, 1, h, w)`` float: 1 at the anchors (``(h + w)`` even), 0 elsewhere."""
    rows = torch.arange(height, device=device).view(-1, 1)
    cols = torch.arange(width, device=device).view(1, -1)
    return ((rows + cols) % 2 == 0).float().view(1, 1, height, width)


class CheckerboardConv2d(nn.Conv2d):
    """A 5×5 convolution that sees only the anchors around a non-anchor position.

    The taps at odd ``(i + j)`` offsets from the centre are the anchors next to a
    non-anchor; the rest (the centre included) are masked to zero. The mask is
    not stored (it is a function of the kernel size); :mod:`oml.models.exact`
    applies it when converting.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(in_channels, out_channels, _KERNEL, padding=_KERNEL // 2)
        i = torch.arange(_KERNEL).view(-1, 1)
        j = torch.arange(_KERNEL).view(1, -1)
        mask = ((i + j) % 2 == 1).float().expand(out_channels, in_channels, -1, -1).contiguous()
        self.register_buffer("mask", mask, persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(x, self.weight * self.mask, self.bias, self.stride, self.padding)


class CheckerboardContext(nn.Module):
    """Context model + parameter refinement for latents of M channels."""

    def __init__(self, M: int) -> None:
        super().__init__()
        self.M = int(M)
        self.context_prediction = CheckerboardConv2d(M, 2 * M)
        self.entropy_parameters = nn.Sequential(
            nn.Conv2d(4 * M, 10 * M // 3, 1),
            nn.LeakyReLU(inplace=True),
            nn.Conv2d(10 * M // 3, 8 * M // 3, 1),
            nn.LeakyReLU(inplace=True),
            nn.Conv2d(8 * M // 3, 2 * M, 1),
        )
        nn.init.zeros_(self.entropy_parameters[-1].weight)
        nn.init.zeros_(self.entropy_parameters[-1].bias)

    def refine(self, params: Tensor, ctx: Tensor) -> Tensor:
        """Hyperprior parameters ``(B, 2M, h, w)`` (scales then means) and a context → refined parameters."""
        return params + self.entropy_parameters(torch.cat((params, ctx), 1))

    def forward(self, y: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        """Training pass: latent y and hyperprior parameters → (scales, means) at every position.

        The anchors' parameters see no context; the anchors' rounded values
        ``round(y − μ) + μ`` (straight-through) feed the context of the rest.
        """
        anchors = anchor_mask(y.shape[2], y.shape[3], y.device)
        first = self.refine(params, torch.zeros_like(params))
        _, means_a = first.chunk(2, 1)
        y_anchor = (quantize_ste(y - means_a) + means_a) * anchors
        second = self.refine(params, self.context_prediction(y_anchor))
        both = first * anchors + second * (1 - anchors)
        scales, means = both.chunk(2, 1)
        return scales, means
