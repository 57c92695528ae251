"""The project's default model: a small λ-conditioned mean-scale hyperprior.

Architecture (Minnen et al. 2018's mean-scale hyperprior, without the
autoregressive context model so that CPU decoding stays fast), with N = 64 and
M = 128 so that it trains on two CPU cores::

    x ─► conv ─ GDN ─ e_1(λ) ─► conv ─ GDN ─ e_2(λ) ─► conv ─ GDN ─ e_3(λ) ─► conv ─ e_4(λ) ─► y
    y ─► h_a ─► z ─► Q/EB ─► h_s ─► (μ, σ) ;  ŷ = Q(y − μ) + μ
    ŷ ─► r(λ_t) ─ deconv ─ IGDN ─ m_1(λ^1) ─ deconv ─ IGDN ─ m_2(λ^2) ─ deconv ─ IGDN ─ m_3(λ^3) ─ deconv ─ m_4(λ^4) ─► x̂

``e_k``, ``r`` and ``m_k`` are :class:`~oml.models.modulator.Modulator` s. The
encoder is conditioned on the target λ too (one model covers every rate, instead
of the paper's one encoder per quality): ``e_4`` is a learned gain on the
latent, which sets the effective quantisation step, and ``r`` is the decoder's
inverse gain, driven by the coded λ_t. Training one conditional encoder costs
one model's training time instead of one per quality, the deciding factor on
CPU. The decoder takes K = 4 values λ^k after its four decoding blocks, so
online adaptation can move them away from λ_t.

References:

- D. Minnen, J. Ballé, G. Toderici, "Joint Autoregressive and Hierarchical Priors for Learned
  Image Compression", NeurIPS 2018 (arXiv:1809.02736).
- D. Minnen, S. Singh, "Channel-wise Autoregressive Entropy Models for Learned Image
  Compression", ICIP 2020 (arXiv:2007.08739).
"""

from __future__ import annotations

import torch
from compressai.entropy_models import EntropyBottleneck, GaussianConditional
from compressai.layers import GDN
from compressai.models import CompressionModel
from compressai.models.utils import conv, deconv
from compressai.ops import quantize_ste
from torch import Tensor, nn

from oml.models.checkerboard import CheckerboardContext
from oml.models.modulator import Modulator
from oml.models.synthesis import ModulatedSynthesis


class ConditionalAnalysis(nn.Module):
    """``g_a`` with a modulator after each GDN and on its output: ``(B,3,H,W), (B,) → (B,M,H/16,W/16)``."""

    def __init__(self, N: int, M: int) -> None:
        super().__init__()
        self.stages = nn.ModuleList(
            [
                nn.Sequential(conv(3, N), GDN(N)),
                nn.Sequential(conv(N, N), GDN(N)),
                nn.Sequential(conv(N, N), GDN(N)),
                conv(N, M),
            ]
        )
        self.modulators = nn.ModuleList(Modulator(c) for c in (N, N, N, M))

    def forward(self, x: Tensor, lmbda: Tensor) -> Tensor:
        for stage, modulator in zip(self.stages, self.modulators):
            x = modulator(stage(x), lmbda)
        return x


class OMLHyperprior(CompressionModel):
    """λ-conditioned mean-scale hyperprior with a K = 4 modulated decoder.

    Args:
        N: channels of the transforms' hidden layers and of the hyper-latent z.
        M: channels of the latent y.
        offsets: give the decoder λ-offset branches
            (:class:`~oml.models.modulator.LambdaOffset`).
        context: refine the hyperprior's parameters with a checkerboard context
            (:class:`~oml.models.checkerboard.CheckerboardContext`, shipped from v3).
    """

    def __init__(self, N: int = 64, M: int = 128, offsets: bool = False, context: bool = False) -> None:
        super().__init__()
        self.N, self.M = int(N), int(M)
        self.g_a = ConditionalAnalysis(N, M)
        self.g_s = ModulatedSynthesis(
            [
                nn.Sequential(deconv(M, N), GDN(N, inverse=True)),
                nn.Sequential(deconv(N, N), GDN(N, inverse=True)),
                nn.Sequential(deconv(N, N), GDN(N, inverse=True)),
                deconv(N, 3),
            ],
            channels=(N, N, N, 3),
            rate_gain_channels=M,
            offsets=offsets,
        )
        self.h_a = nn.Sequential(
            conv(M, N, stride=1, kernel_size=3),
            nn.LeakyReLU(inplace=True),
            conv(N, N),
            nn.LeakyReLU(inplace=True),
            conv(N, N),
        )
        self.h_s = nn.Sequential(
            deconv(N, M),
            nn.LeakyReLU(inplace=True),
            deconv(M, M * 3 // 2),
            nn.LeakyReLU(inplace=True),
            conv(M * 3 // 2, M * 2, stride=1, kernel_size=3),
        )
        self.entropy_bottleneck = EntropyBottleneck(N)
        self.gaussian_conditional = GaussianConditional(None)
        self.context = CheckerboardContext(M) if context else None

    def forward(self, x: Tensor, lmbda: Tensor) -> dict:
        """Training pass: x ``(B,3,H,W)`` in [0, 1], λ ``(B,)``.

        Mixed quantisation (Minnen & Singh 2020): the rate term sees y plus
        uniform noise, the decoder sees the rounded latent ``μ + round(y − μ)``
        with a straight-through gradient, as it will at test time (μ refined by
        the checkerboard context when the model has one). The decoder gets ``λ^1 = … = λ^4 = λ``.
        """
        y = self.g_a(x, lmbda).float()
        z = self.h_a(y).float()
        with torch.autocast(x.device.type, enabled=False):  # likelihoods in float32 under AMP
            z_hat, z_likelihoods = self.entropy_bottleneck(z)
        params = self.h_s(z_hat).float()
        scales_hat, means_hat = params.chunk(2, 1) if self.context is None else self.context(y, params)
        scales_hat, means_hat = scales_hat.float(), means_hat.float()
        with torch.autocast(x.device.type, enabled=False):
            _, y_likelihoods = self.gaussian_conditional(y, scales_hat, means=means_hat)
        y_hat = quantize_ste(y - means_hat) + means_hat
        lambdas = lmbda.unsqueeze(1).expand(-1, self.g_s.num_lambdas)
        x_hat = self.g_s(y_hat, lambdas, lmbda)
        return {"x_hat": x_hat, "likelihoods": {"y": y_likelihoods, "z": z_likelihoods}}
