"""Conditional feature modulator (paper §3.1, Eq. 3, Fig. 2b).

For one modulated feature map ``Y`` of ``C`` channels and one rate-distortion
trade-off ``λ^k``::

    u = encode_lambda(λ^k)                      # scalar in [-1, 1]
    s = softplus(FC_2(ReLU(FC_1(u))))           # (C,) positive scales
    Y' = s · Y                                  # channel-wise

λ encoding: λ spans two decades (0.0018–0.18 in CompressAI's MSE table), so the
FC layers see its logarithm, mapped affinely so that ``λ = 0.0018 → -1`` and
``λ = 0.18 → +1``. Values outside that range extrapolate linearly in ``log λ``.
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
