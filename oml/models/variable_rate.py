"""The variable-rate model the codec talks to: encoders, entropy models, one modulated decoder."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

import torch
from torch import Tensor, nn

from oml.models.latent import LatentCode, decode_latent, encode_latent
from oml.models.synthesis import ModulatedSynthesis


class VariableRateModel(nn.Module):
    """Per-quality (or one λ-conditioned) encoder + hyperprior, and one decoder with K modulators.

    Args:
        name: public model id (``oml-default``, ``mbt2018-mean``, …).
        kind: latent coding kind (see :mod:`oml.models.latent`).
        lambdas: quality → λ of this quality group (CompressAI's MSE table).
        encoders: quality → base model holding ``g_a`` and the hyperprior
            modules (a subset of the group may be loaded); a single entry under
            quality 0 for a λ-conditioned encoder.
        synthesis: the group's shared modulated decoder.
        latent_channels: M, channels of ŷ.
    """

    def __init__(
        self,
        name: str,
        kind: str,
        lambdas: Mapping[int, float],
        encoders: Mapping[int, nn.Module],
        synthesis: ModulatedSynthesis,
        latent_channels: int,
    ) -> None:
        super().__init__()
        self.name = name
        self.kind = kind
        self.lambdas = dict(lambdas)
        self.conditional = set(encoders) == {0}
        self.encoders = nn.ModuleDict({str(q): m for q, m in encoders.items()})
        self.synthesis = synthesis
        self.latent_channels = int(latent_channels)
        self._fingerprints: dict[int, bytes] = {}

    @property
    def device(self) -> torch.device:
        """Where the transforms run (entropy coding itself always runs on the CPU)."""
        return next(self.synthesis.parameters()).device

    @property
    def num_lambdas(self) -> int:
        """K, the length of the decoder's λ vector."""
        return self.synthesis.num_lambdas

    @property
    def lambda_range(self) -> tuple[float, float]:
        return min(self.lambdas.values()), max(self.lambdas.values())

    def resolve(self, quality: int | None = None, lmbda: float | None = None) -> tuple[int, float]:
        """(quality, λ_t) from a quality or a λ; quality 0 means a continuous λ (conditional encoders only)."""
        if (quality is None) == (lmbda is None):
            raise ValueError("give exactly one of a quality or a λ")
        if quality is not None:
            if quality not in self.lambdas:
                raise ValueError(f"{self.name} has qualities {sorted(self.lambdas)} in this group, not {quality}")
            return quality, self.lambdas[quality]
        for q, value in self.lambdas.items():
            if abs(value - lmbda) <= 1e-9:
                return q, value
        low, high = self.lambda_range
        if not self.conditional:
            raise ValueError(f"{self.name} codes only the λ values {sorted(self.lambdas.values())}; got {lmbda}")
        if not low / 2 <= lmbda <= high * 2:
            raise ValueError(f"λ={lmbda} is outside what {self.name} was trained for ({low}–{high}, ×2 margin)")
        return 0, float(lmbda)

    def _encoder(self, quality: int) -> nn.Module:
        key = "0" if self.conditional else str(quality)
        if key not in self.encoders:
            raise ValueError(f"{self.name}: quality {quality} was not loaded (loaded: {sorted(map(int, self.encoders))})")
        return self.encoders[key]

    def analyze(self, x: Tensor, quality: int, lmbda: float) -> Tensor:
        """``g_a``: x ``(1,3,H,W)`` in [0,1] → y ``(1,M,H/16,W/16)``."""
        enc = self._encoder(quality)
        if self.conditional:
            return enc.g_a(x, torch.full((x.shape[0],), lmbda, device=x.device, dtype=x.dtype))
        return enc.g_a(x)

    @torch.no_grad()
    def encode_latent(self, x: Tensor, quality: int, lmbda: float) -> LatentCode:
        """Analysis and entropy coding of one padded tile ``(1,3,H,W)``."""
        return encode_latent(self.kind, self._encoder(quality), self.analyze(x, quality, lmbda))

    @torch.no_grad()
    def decode_latent(self, strings: list[bytes], z_shape: tuple[int, int], quality: int) -> Tensor:
        """Strings → ŷ ``(1,M,h,w)``, bit-identical to the encoder's ŷ."""
        return decode_latent(self.kind, self._encoder(quality), strings, z_shape, self.latent_channels)

    def synthesize(self, y_hat: Tensor, lambdas: Tensor, lmbda_t: float) -> Tensor:
        """Modulated decoder: ŷ ``(B,M,h,w)``, λ vectors ``(B,K)``, coded λ_t → x̂ ``(B,3,16h,16w)`` (not clamped)."""
        return self.synthesis(y_hat, lambdas, torch.full((y_hat.shape[0],), lmbda_t, device=y_hat.device))

    def fingerprint(self, quality: int) -> bytes:
        """8-byte SHA-256 digest of the parameters that decoding at ``quality`` depends on."""
        key = 0 if self.conditional else quality
        if key not in self._fingerprints:
            digest = hashlib.sha256(self.name.encode())
            for module in (self._encoder(quality), self.synthesis):
                for pname, p in sorted(module.named_parameters()):
                    digest.update(pname.encode())
                    digest.update(p.detach().to(torch.float32).cpu().contiguous().numpy().tobytes())
            self._fingerprints[key] = digest.digest()[:8]
        return self._fingerprints[key]

    def update_entropy_models(self) -> None:
        """Build the entropy coders' CDF tables (after loading or training weights)."""
        for enc in self.encoders.values():
            enc.update(force=True)
        self._fingerprints.clear()
