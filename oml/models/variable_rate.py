"""The variable-rate model the codec talks to: encoders, entropy models, one modulated decoder."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

import torch
from torch import Tensor, nn

from oml.models.latent import LatentCode, LatentCodec, decode_latent_float, latent_codec
from oml.models.synthesis import ModulatedSynthesis

# The entropy coders' tables: integer CDFs, their lengths and offsets, and the Gaussian scale table.
TABLE_BUFFERS = ("_quantized_cdf", "_offset", "_cdf_length", "scale_table")


def is_table(key: str) -> bool:
    """Whether the buffer name ``key`` names an entropy-coder table."""
    return key.rsplit(".", 1)[-1] in TABLE_BUFFERS


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
        self._fingerprints: dict[tuple[int, int], bytes] = {}
        self._codecs: dict[int, LatentCodec] = {}

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

    def latent_codec(self, quality: int) -> LatentCodec:
        """The exact entropy codec of ``quality``'s encoder (built once from the current weights and tables)."""
        key = 0 if self.conditional else quality
        if key not in self._codecs:
            self._codecs[key] = latent_codec(self.kind, self._encoder(quality))
        return self._codecs[key]

    @torch.no_grad()
    def encode_latent(self, x: Tensor, quality: int, lmbda: float) -> LatentCode:
        """Analysis and entropy coding of one padded tile ``(1,3,H,W)``."""
        return self.latent_codec(quality).encode(self.analyze(x, quality, lmbda))

    @torch.no_grad()
    def decode_latent(self, strings: list[bytes], z_shape: tuple[int, int], quality: int) -> tuple[Tensor, int]:
        """Strings → (ŷ ``(1,M,h,w)`` on the CPU, bit-identical to the encoder's ŷ on any machine; CRC-32 of the symbols)."""
        return self.latent_codec(quality).decode(strings, z_shape)

    @torch.no_grad()
    def decode_latent_float(self, strings: list[bytes], z_shape: tuple[int, int], quality: int) -> Tensor:
        """Format 1: strings → ŷ through the float hyper-decoder (machine-dependent symbols)."""
        return decode_latent_float(self.kind, self._encoder(quality), strings, z_shape, self.latent_channels)

    def synthesize(self, y_hat: Tensor, lambdas: Tensor, lmbda_t: float) -> Tensor:
        """Modulated decoder: ŷ ``(B,M,h,w)``, λ vectors ``(B,K)``, coded λ_t → x̂ ``(B,3,16h,16w)`` (not clamped)."""
        return self.synthesis(y_hat, lambdas, torch.full((y_hat.shape[0],), lmbda_t, device=y_hat.device))

    def fingerprint(self, quality: int, version: int = 2) -> bytes:
        """8-byte SHA-256 digest of what decoding at ``quality`` depends on.

        Format 1 digests the parameters; format 2 adds the entropy coder's integer tables and
        scale table, which decoding now takes from the weights file instead of rebuilding.
        """
        key = (0 if self.conditional else quality, version)
        if key not in self._fingerprints:
            digest = hashlib.sha256(self.name.encode())
            for module in (self._encoder(quality), self.synthesis):
                for pname, p in sorted(module.named_parameters()):
                    digest.update(pname.encode())
                    digest.update(p.detach().to(torch.float32).cpu().contiguous().numpy().tobytes())
            if version >= 2:
                for bname, b in sorted(self._encoder(quality).named_buffers()):
                    if is_table(bname):
                        digest.update(bname.encode())
                        digest.update(b.detach().cpu().contiguous().numpy().tobytes())
            self._fingerprints[key] = digest.digest()[:8]
        return self._fingerprints[key]

    def update_entropy_models(self, force: bool = True) -> None:
        """Build the entropy coders' CDF tables from the learned densities (after training weights).

        Tables are float computations (``erfc``, sigmoids) whose results can differ between
        machines: a model is built once, then its tables travel in its weights file. With
        ``force=False`` only entropy models without tables are built.
        """
        for enc in self.encoders.values():
            if force or any(b.numel() == 0 for n, b in enc.named_buffers() if is_table(n)):
                enc.update(force=True)
        self._fingerprints.clear()
        self._codecs.clear()
