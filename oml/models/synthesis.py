"""Variable-rate synthesis transform: a base decoder with K modulators.

Paper Fig. 2 (a, c, d): the base model's synthesis transform ``g_s`` is cut into
K stages; before each stage its input features are scaled channel-wise by a
:class:`~oml.models.modulator.Modulator` driven by its own ``λ^k``::

    ŷ ─► m_1(λ^1) ─► stage_1 ─► m_2(λ^2) ─► stage_2 ─► … ─► m_K(λ^K) ─► stage_K ─► x̂

so ``m_1`` scales the decoded latent (the decoder side of a gain unit) and
``m_2 … m_K`` scale the outputs of the first K−1 decoding blocks. With
``λ^1 = … = λ^K`` this is plain variable-rate decoding.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from oml.models.modulator import Modulator


class ModulatedSynthesis(nn.Module):
    """``g_s`` split into stages, each preceded by a modulator.

    Args:
        stages: the K consecutive pieces of the base synthesis transform.
        channels: channel count of each stage's input, one per stage.
        hidden: width of the modulators' hidden FC layer.
    """

    def __init__(self, stages: Sequence[nn.Module], channels: Sequence[int], hidden: int = 64):
        super().__init__()
        if len(stages) != len(channels):
            raise ValueError(f"{len(stages)} stages but {len(channels)} channel counts")
        self.stages = nn.ModuleList(stages)
        self.modulators = nn.ModuleList(Modulator(c, hidden) for c in channels)

    @property
    def num_lambdas(self) -> int:
        """K, the number of modulated layers (length of the λ vector)."""
        return len(self.stages)

    def forward(self, y_hat: Tensor, lambdas: Tensor) -> Tensor:
        """Decode ``y_hat`` ``(B, M, h, w)`` with λ vectors ``(B, K)`` → ``(B, 3, H, W)``."""
        if lambdas.dim() != 2 or lambdas.shape[1] != self.num_lambdas:
            raise ValueError(f"lambdas must have shape (B, {self.num_lambdas}), got {tuple(lambdas.shape)}")
        x = y_hat
        for k, (modulator, stage) in enumerate(zip(self.modulators, self.stages)):
            x = stage(modulator(x, lambdas[:, k]))
        return x


def split_sequential(seq: nn.Sequential, starts: Sequence[int]) -> list[nn.Module]:
    """Cut ``seq`` into consecutive pieces beginning at the indices ``starts`` (first is 0)."""
    if not starts or starts[0] != 0 or list(starts) != sorted(set(starts)) or starts[-1] >= len(seq):
        raise ValueError(f"bad split points {list(starts)} for a sequence of {len(seq)} layers")
    ends = list(starts[1:]) + [len(seq)]
    return [seq[a:b] for a, b in zip(starts, ends)]
