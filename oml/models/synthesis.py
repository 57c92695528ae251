"""Variable-rate synthesis transform: a base decoder with K modulators.

Paper Fig. 2 (a, c, d): the base model's synthesis transform ``g_s`` is cut into
K decoding blocks, and the output of each block is scaled channel-wise by a
:class:`~oml.models.modulator.Modulator` driven by its own ``λ^k``::

    ŷ ─► [r(λ_t)] ─► block_1 ─► m_1(λ^1) ─► block_2 ─► m_2(λ^2) ─► … ─► block_K ─► m_K(λ^K) ─► x̂

``r`` is an optional rate gain on the decoded latent, driven by the coded λ_t
itself (the decoder side of a λ-conditioned encoder's gain). It is part of
plain variable-rate decoding and is never adapted, so ``block_1``'s output
depends on no adapted λ^k: online adaptation computes it once (:meth:`prefix`)
and reruns only :meth:`suffix`. With ``λ^1 = … = λ^K = λ_t`` this is plain
variable-rate decoding.

Optionally (beyond the paper) each modulator has a λ-offset branch
(:class:`~oml.models.modulator.LambdaOffset`) that multiplies its scales by
``exp(o_k(λ^k, λ_t))``, with ``o_k = 0`` at ``λ^k = λ_t``: plain decoding is the
same with or without the branches, which only shape the response to moved λ^k.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from oml.models.modulator import LambdaOffset, Modulator


class ModulatedSynthesis(nn.Module):
    """``g_s`` split into K blocks, each followed by a modulator.

    Args:
        blocks: the K consecutive decoding blocks of the base synthesis transform.
        channels: output channel count of each block.
        rate_gain_channels: channels of ŷ for a λ_t-driven rate gain, or ``None`` for none.
        hidden: width of the modulators' hidden FC layer.
        offsets: add a :class:`~oml.models.modulator.LambdaOffset` branch to each
            modulator (beyond the paper): a response to ``λ^k ≠ λ_t`` that leaves
            plain decoding unchanged. :meth:`suffix` then needs λ_t.
    """

    def __init__(
        self,
        blocks: Sequence[nn.Module],
        channels: Sequence[int],
        rate_gain_channels: int | None = None,
        hidden: int = 64,
        offsets: bool = False,
    ) -> None:
        super().__init__()
        if len(blocks) != len(channels):
            raise ValueError(f"{len(blocks)} blocks but {len(channels)} channel counts")
        self.blocks = nn.ModuleList(blocks)
        self.modulators = nn.ModuleList(Modulator(c, hidden) for c in channels)
        self.rate_gain = Modulator(rate_gain_channels, hidden) if rate_gain_channels else None
        self.offsets = None
        if offsets:
            self.add_offsets()

    def add_offsets(self) -> None:
        """Give every modulator a fresh λ-offset branch (the identity until trained)."""
        if self.offsets is not None:
            raise ValueError("this decoder has λ-offset branches already")
        channels = [m.fc2.out_features for m in self.modulators]
        ref = next(self.parameters())
        self.offsets = nn.ModuleList(LambdaOffset(c) for c in channels).to(ref.device, ref.dtype)

    @property
    def num_lambdas(self) -> int:
        """K, the number of modulated layers (length of the λ vector)."""
        return len(self.blocks)

    def prefix(self, y_hat: Tensor, lmbda_t: Tensor) -> Tensor:
        """The part that no adapted λ^k touches: ``block_1(r(λ_t)·ŷ)``; ŷ ``(B,M,h,w)``, λ_t ``(B,)``."""
        h = self.rate_gain(y_hat, lmbda_t) if self.rate_gain is not None else y_hat
        return self.blocks[0](h)

    def suffix(self, h: Tensor, lambdas: Tensor, lmbda_t: Tensor | None = None) -> Tensor:
        """The rest, from :meth:`prefix`'s output and λ vectors ``(B,K)`` → x̂ ``(B,3,H,W)``.

        ``lmbda_t`` ``(B,)``, the coded λ, is needed only with offset branches.
        """
        return self.tail(h, lambdas, lmbda_t, 0)

    def scales(self, k: int, lmbda: Tensor, lmbda_t: Tensor | None = None) -> Tensor:
        """Channel scales ``(B, C_k)`` of modulator ``k`` (0-based) at λ^k ``(B,)``, with its offset branch."""
        scales = self.modulators[k].scales(lmbda)
        if self.offsets is not None:
            scales = scales * torch.exp(self.offsets[k](lmbda, lmbda_t))
        return scales

    def tail(self, h: Tensor, lambdas: Tensor, lmbda_t: Tensor | None, start: int) -> Tensor:
        """x̂ from ``h``, the output of block ``start`` (0-based) before its modulator: modulators
        ``start … K−1`` and the blocks between them. ``start = 0`` is :meth:`suffix`.

        The operations are those of :meth:`suffix` from that block on, so an output kept by
        :meth:`block_outputs` gives, for λ vectors that agree on the modulators before ``start``,
        exactly the pixels a full decoding gives.
        """
        self._check(lambdas, lmbda_t)
        for k in range(start, self.num_lambdas):
            if k > start:
                h = self.blocks[k](h)
            h = h * self.scales(k, lambdas[:, k], lmbda_t)[:, :, None, None]
        return h

    def block_outputs(self, h: Tensor, lambdas: Tensor, lmbda_t: Tensor | None = None) -> tuple[list[Tensor], Tensor]:
        """:meth:`suffix` that also keeps each block's output before its modulator: ``([h, …], x̂)``,
        K tensors, the first being ``h`` itself (the same operations, so the same x̂)."""
        self._check(lambdas, lmbda_t)
        outputs = [h]
        for k in range(1, self.num_lambdas):
            outputs.append(self.blocks[k](outputs[-1] * self.scales(k - 1, lambdas[:, k - 1], lmbda_t)[:, :, None, None]))
        return outputs, self.tail(outputs[-1], lambdas, lmbda_t, self.num_lambdas - 1)

    def _check(self, lambdas: Tensor, lmbda_t: Tensor | None) -> None:
        if lambdas.dim() != 2 or lambdas.shape[1] != self.num_lambdas:
            raise ValueError(f"lambdas must have shape (B, {self.num_lambdas}), got {tuple(lambdas.shape)}")
        if self.offsets is not None and lmbda_t is None:
            raise ValueError("this decoder has λ-offset branches: suffix() needs lmbda_t")

    def forward(self, y_hat: Tensor, lambdas: Tensor, lmbda_t: Tensor) -> Tensor:
        """Decode ŷ ``(B,M,h,w)`` with λ vectors ``(B,K)`` and coded λ_t ``(B,)`` → x̂ ``(B,3,H,W)``."""
        return self.suffix(self.prefix(y_hat, lmbda_t), lambdas, lmbda_t)


def split_sequential(seq: nn.Sequential, starts: Sequence[int]) -> list[nn.Module]:
    """Cut ``seq`` into consecutive pieces beginning at the indices ``starts`` (first is 0)."""
    if not starts or starts[0] != 0 or list(starts) != sorted(set(starts)) or starts[-1] >= len(seq):
        raise ValueError(f"bad split points {list(starts)} for a sequence of {len(seq)} layers")
    ends = list(starts[1:]) + [len(seq)]
    return [seq[a:b] for a, b in zip(starts, ends)]
