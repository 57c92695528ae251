"""Conditional feature modulator (paper §3.1, Eq. 3, Fig. 2b).

For one modulated feature map ``Y`` of ``C`` channels and one rate-distortion
trade-off ``λ^k``::

    u = encode_lambda(λ^k)                      # scalar in [-1, 1]
    s = softplus(FC_2(ReLU(FC_1(u))))           # (C,) positive scales
    Y' = s · Y                                  # channel-wise

λ encoding: λ spans two decades (0.0018–0.18 in CompressAI's MSE table), so the
FC layers see its logarithm, mapped affinely so that ``λ = 0.0018 → -1`` and
``λ = 0.18 → +1``. Values outside that range extrapolate linearly in ``log λ``.

References:

- W. Jiang, W. Wang, S. Li, S. Liu, "Online Meta Adaptation for Variable-Rate Learned
  Image Compression", arXiv preprint, 16 Nov 2021.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn import functional as F

LAMBDA_LOW = 0.0018
LAMBDA_HIGH = 0.18
_LOG_LOW = math.log(LAMBDA_LOW)
_LOG_SPAN = math.log(LAMBDA_HIGH) - _LOG_LOW

# softplus(_UNIT_BIAS) == 1: a fresh modulator is the identity at every λ.
_UNIT_BIAS = math.log(math.e - 1.0)


def encode_lambda(lmbda: Tensor) -> Tensor:
    """Map λ (any shape, > 0) to ``2·(ln λ − ln 0.0018)/(ln 0.18 − ln 0.0018) − 1``."""
    return 2.0 * (torch.log(lmbda) - _LOG_LOW) / _LOG_SPAN - 1.0


class Modulator(nn.Module):
    """Channel-wise scale ``s(λ) = softplus(FC_2(ReLU(FC_1(enc(λ)))))``.

    Args:
        channels: number of channels ``C`` of the modulated feature map.
        hidden: width of the hidden FC layer.

    The second layer starts at zero weight and a bias with ``softplus(b) = 1``,
    so an untrained modulator leaves the base model's features unchanged.
    """

    def __init__(self, channels: int, hidden: int = 64) -> None:
        super().__init__()
        self.fc1 = nn.Linear(1, hidden)
        self.fc2 = nn.Linear(hidden, channels)
        nn.init.zeros_(self.fc2.weight)
        nn.init.constant_(self.fc2.bias, _UNIT_BIAS)

    def scales(self, lmbda: Tensor) -> Tensor:
        """λ of shape ``(B,)`` → positive scales of shape ``(B, C)``."""
        u = encode_lambda(lmbda).unsqueeze(-1)
        return F.softplus(self.fc2(F.relu(self.fc1(u))))

    def forward(self, y: Tensor, lmbda: Tensor) -> Tensor:
        """Scale ``y`` of shape ``(B, C, H, W)`` by ``s(λ)`` with λ of shape ``(B,)``."""
        return y * self.scales(lmbda)[:, :, None, None]


class LambdaOffset(nn.Module):
    """Channel-wise log-scale offset driven by how far λ^k has moved from the coded λ_t.

    Beyond the paper. A modulator sees only its own λ^k, and plain decoding uses
    ``s_k(λ_t)`` at every coded λ_t, so on the coding range ``s_k`` is pinned by
    plain decoding: moving λ^k can only borrow another quality's response. This
    branch adds a response that exists only off the diagonal::

        t = enc(λ_t),  d = enc(λ^k) − t
        o(λ^k, λ_t) = FC_2(tanh(FC_1([d, t]))) − FC_2(tanh(FC_1([0, t])))
        Y' = s_k(λ^k) · exp(o) · Y

    λ_t enters rounded to float16, as the file carries λ*: ``o`` is exactly 0 when
    λ^k is the float16 λ_t that plain decoding uses, so plain decoding is the same whatever
    the branch's weights: training it (meta mode ``offset``) can only change
    what online adaptation finds. ``FC_2`` starts at zero: a fresh branch is
    the identity everywhere.
    """

    def __init__(self, channels: int, hidden: int = 32) -> None:
        super().__init__()
        self.fc1 = nn.Linear(2, hidden)
        self.fc2 = nn.Linear(hidden, channels, bias=False)
        nn.init.zeros_(self.fc2.weight)

    def forward(self, lmbda: Tensor, lmbda_t: Tensor) -> Tensor:
        """λ^k and λ_t of shape ``(B,)`` → log-scale offsets ``(B, C)``, 0 where λ^k = λ_t."""
        t = encode_lambda(lmbda_t.half().to(lmbda.dtype))
        d = encode_lambda(lmbda) - t
        moved = self.fc2(torch.tanh(self.fc1(torch.stack((d, t), -1))))
        still = self.fc2(torch.tanh(self.fc1(torch.stack((torch.zeros_like(t), t), -1))))
        return moved - still
