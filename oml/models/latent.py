"""Entropy coding of one tile's latent with a base model's own hyperprior.

Three kinds, matching CompressAI's models, one class each:

- :class:`ScaleCodec`: Ballé 2018 scale hyperprior (``bmshj2018-hyperprior``),
  ``z = h_a(|y|)``, zero-mean Gaussian conditional.
- :class:`MeanScaleCodec`: Minnen 2018 mean-scale hyperprior (``mbt2018-mean``,
  the default model).
- :class:`AutoregressiveCodec`: Minnen 2018 joint autoregressive + hierarchical
  prior (``mbt2018``, ``cheng2020-*``), coded position by position with the
  base model's masked context model.
- :class:`CheckerboardCodec`: a mean-scale hyperprior refined by a checkerboard
  context (:mod:`oml.models.checkerboard`, the default model from v3): the
  anchors, then the rest, each half in one vectorised step.

Every quantity the entropy decoder depends on is computed exactly
(:mod:`oml.models.exact`): the CDF tables are integers loaded from the weights
file, ẑ is its integer symbols plus the stored medians, and the scales and
means come from integer versions of ``h_s`` (and of the context model), so the
decoded symbols are the same on every machine, device and thread count. Each
coded latent carries a CRC-32 of its symbols (:func:`symbol_check`), which the
decoder recomputes: a desynchronised decoder is detected, never silent.

:func:`decode_latent_float` is the format-1 decoder (float ``h_s``): it decodes
files written before, on machines whose float results match the encoder's.

References:

- J. Ballé, D. Minnen, S. Singh, S. J. Hwang, N. Johnston, "Variational Image Compression
  with a Scale Hyperprior", ICLR 2018 (arXiv:1802.01436).
- D. Minnen, J. Ballé, G. Toderici, "Joint Autoregressive and Hierarchical Priors for Learned
  Image Compression", NeurIPS 2018 (arXiv:1809.02736).
- Z. Cheng, H. Sun, M. Takeuchi, J. Katto, "Learned Image Compression with Discretized
  Gaussian Mixture Likelihoods and Attention Modules", CVPR 2020 (arXiv:2001.01568).
"""

from __future__ import annotations

import zlib
from typing import NamedTuple

import torch
import torch.nn.functional as F
from compressai.ans import RansDecoder, RansEncoder
from torch import Tensor, nn

from oml.models.checkerboard import anchor_mask
from oml.models.exact import FRACTION_BITS, LIMIT, ExactNet, from_fixed, to_fixed

LATENT_KINDS = ("scale", "mean_scale", "autoregressive", "checkerboard")

_AR_KERNEL = 5
_AR_PAD = (_AR_KERNEL - 1) // 2
_Z_TO_Y = 4  # spatial scale between z and y in every supported model


class LatentCode(NamedTuple):
    """One tile's coded latent: ``strings = [y_string, z_string]``, z's spatial shape, ŷ ``(1, M, h, w)``
    and the CRC-32 of the coded symbols."""

    strings: list[bytes]
    z_shape: tuple[int, int]
    y_hat: Tensor
    check: int


def symbol_check(z_symbols: Tensor, y_symbols: Tensor) -> int:
    """CRC-32 of the z then y symbols, as little-endian int32 in C order."""
    crc = zlib.crc32(z_symbols.to(torch.int32).contiguous().numpy().astype("<i4").tobytes())
    return zlib.crc32(y_symbols.to(torch.int32).contiguous().numpy().astype("<i4").tobytes(), crc)


def _padded(string: bytes, symbols: int) -> bytes:
    """``string`` followed by zeros: a damaged or desynchronised stream reads past its end (one
    32-bit word per symbol at most in normal mode) into zeros rather than into foreign memory."""
    return string + bytes(4 * (symbols + 4))


class _Tables(NamedTuple):
    """An entropy model's integer tables: CDF rows cut to their lengths, and offsets."""

    cdf: list[list[int]]
    lengths: list[int]
    offsets: list[int]

    @classmethod
    def of(cls, em: nn.Module) -> _Tables:
        if em._quantized_cdf.numel() == 0:
            raise ValueError("the entropy model has no CDF tables (load a weights file or call update())")
        lengths = em._cdf_length.reshape(-1).int().tolist()
        rows = em._quantized_cdf.tolist()
        return cls([row[:n] for row, n in zip(rows, lengths)], lengths, em._offset.reshape(-1).int().tolist())

    def encode(self, symbols: Tensor, indexes: Tensor) -> bytes:
        return RansEncoder().encode_with_indexes(
            symbols.reshape(-1).int().tolist(), indexes.reshape(-1).int().tolist(), self.cdf, self.lengths, self.offsets
        )

    def decode(self, string: bytes, indexes: Tensor) -> Tensor:
        values = RansDecoder().decode_with_indexes(
            _padded(string, indexes.numel()), indexes.reshape(-1).int().tolist(), self.cdf, self.lengths, self.offsets
        )
        return torch.tensor(values, dtype=torch.float64).view(indexes.shape)


class _HyperLatent:
    """z: symbols ``round(z − median)`` per channel with the factorised prior's tables."""

    def __init__(self, eb: nn.Module) -> None:
        self.tables = _Tables.of(eb)
        self.medians = eb.quantiles[:, 0, 1].detach().double().cpu().view(1, -1, 1, 1)

    def _indexes(self, shape: tuple[int, int]) -> Tensor:
        return torch.arange(self.medians.shape[1], dtype=torch.int32).view(1, -1, 1, 1).expand(1, -1, *shape)

    def encode(self, z: Tensor) -> tuple[bytes, Tensor, Tensor]:
        """z ``(1,N,h,w)`` → (string, symbols, ẑ in fixed point)."""
        symbols = torch.round(z.detach().double().cpu() - self.medians)
        string = self.tables.encode(symbols, self._indexes(tuple(z.shape[2:])))
        return string, symbols, to_fixed(symbols + self.medians)

    def decode(self, string: bytes, shape: tuple[int, int]) -> tuple[Tensor, Tensor]:
        symbols = self.tables.decode(string, self._indexes(shape))
        return symbols, to_fixed(symbols + self.medians)


class LatentCodec:
    """Exact entropy coding of one tile's latent with the hyperprior modules of a base model ``m``."""

    kind = ""

    def __init__(self, m: nn.Module) -> None:
        self.m = m
        self.z = _HyperLatent(m.entropy_bottleneck)
        gc = m.gaussian_conditional
        self.tables = _Tables.of(gc)
        self.boundaries = gc.scale_table[:-1].detach().double().cpu()
        self.h_s = ExactNet(m.h_s)

    def indexes(self, scales: Tensor) -> Tensor:
        """CDF index per fixed-point scale: the number of table scales strictly below it (CompressAI's rule)."""
        return torch.bucketize(from_fixed(scales).contiguous(), self.boundaries).to(torch.int32)

    def _hyper(self, y: Tensor) -> Tensor:
        return self.m.h_a(y)

    @torch.no_grad()
    def encode(self, y: Tensor, z: Tensor | None = None) -> LatentCode:
        """y ``(1, M, h, w)`` → strings and ŷ (on y's device), bit-identical to what :meth:`decode` returns.

        z defaults to the hyper-analysis of y; latent refinement (:mod:`oml.refine`) passes its own.
        """
        if y.shape[0] != 1:
            raise ValueError("latents are coded one tile at a time (batch size 1)")
        z_string, z_symbols, z_fixed = self.z.encode(self._hyper(y) if z is None else z)
        y_string, y_symbols, y_hat = self._encode_y(y.detach().double().cpu(), self.h_s(z_fixed))
        z_shape = (int(z_fixed.shape[2]), int(z_fixed.shape[3]))
        return LatentCode([y_string, z_string], z_shape, y_hat.float().to(y.device), symbol_check(z_symbols, y_symbols))

    @torch.no_grad()
    def decode(self, strings: list[bytes], z_shape: tuple[int, int]) -> tuple[Tensor, int]:
        """Strings → (ŷ ``(1, M, 4·z_h, 4·z_w)`` float32 on the CPU, CRC-32 of the decoded symbols)."""
        y_string, z_string = strings
        z_symbols, z_fixed = self.z.decode(z_string, z_shape)
        y_symbols, y_hat = self._decode_y(y_string, self.h_s(z_fixed))
        return y_hat.float(), symbol_check(z_symbols, y_symbols)

    def _encode_y(self, y: Tensor, params: Tensor) -> tuple[bytes, Tensor, Tensor]:
        raise NotImplementedError

    def _decode_y(self, string: bytes, params: Tensor) -> tuple[Tensor, Tensor]:
        raise NotImplementedError


class ScaleCodec(LatentCodec):
    """Zero-mean Gaussian conditional; ``h_s`` gives the scales."""

    kind = "scale"

    def _hyper(self, y: Tensor) -> Tensor:
        return self.m.h_a(torch.abs(y))

    def _encode_y(self, y: Tensor, params: Tensor) -> tuple[bytes, Tensor, Tensor]:
        symbols = torch.round(y)
        return self.tables.encode(symbols, self.indexes(params)), symbols, symbols

    def _decode_y(self, string: bytes, params: Tensor) -> tuple[Tensor, Tensor]:
        symbols = self.tables.decode(string, self.indexes(params))
        return symbols, symbols


class MeanScaleCodec(LatentCodec):
    """Gaussian conditional with means; ``h_s`` gives (scales, means); ŷ = round(y − μ) + μ."""

    kind = "mean_scale"

    def _encode_y(self, y: Tensor, params: Tensor) -> tuple[bytes, Tensor, Tensor]:
        scales, means = params.chunk(2, 1)
        mu = from_fixed(means)
        symbols = torch.round(y - mu)
        return self.tables.encode(symbols, self.indexes(scales)), symbols, symbols + mu

    def _decode_y(self, string: bytes, params: Tensor) -> tuple[Tensor, Tensor]:
        scales, means = params.chunk(2, 1)
        symbols = self.tables.decode(string, self.indexes(scales))
        return symbols, symbols + from_fixed(means)


class AutoregressiveCodec(LatentCodec):
    """Masked 5×5 context model + ``h_s``, position by position in raster order (CompressAI's order)."""

    kind = "autoregressive"

    def __init__(self, m: nn.Module) -> None:
        super().__init__(m)
        self.context = ExactNet(m.context_prediction)
        self.context.ops[0] = self.context.ops[0]._replace(padding=(0, 0))  # applied to a 5×5 crop
        self.entropy_parameters = ExactNet(m.entropy_parameters)

    def _positions(self, params: Tensor, step) -> tuple[Tensor, Tensor]:
        """Run the context loop; ``step(h, w, indexes (M,), μ (M,))`` returns the symbols (M,) there."""
        _, _, height, width = params.shape
        channels = params.shape[1] // 2
        y_fixed = torch.zeros((1, channels, height + 2 * _AR_PAD, width + 2 * _AR_PAD), dtype=torch.float64)
        symbols = torch.zeros((channels, height, width), dtype=torch.float64)
        y_hat = torch.zeros((1, channels, height, width), dtype=torch.float64)
        for h in range(height):
            for w in range(width):
                ctx = self.context(y_fixed[:, :, h : h + _AR_KERNEL, w : w + _AR_KERNEL])
                scales, means = self.entropy_parameters(torch.cat((params[:, :, h : h + 1, w : w + 1], ctx), 1)).view(2, channels)
                mu = from_fixed(means)
                s = step(h, w, self.indexes(scales), mu)
                symbols[:, h, w] = s
                y_hat[0, :, h, w] = s + mu
                y_fixed[0, :, h + _AR_PAD, w + _AR_PAD] = (s * 2.0**FRACTION_BITS + means).clamp(-LIMIT, LIMIT)
        return symbols, y_hat

    def _encode_y(self, y: Tensor, params: Tensor) -> tuple[bytes, Tensor, Tensor]:
        all_symbols, all_indexes = [], []

        def step(h: int, w: int, indexes: Tensor, mu: Tensor) -> Tensor:
            s = torch.round(y[0, :, h, w] - mu)
            all_symbols.append(s)
            all_indexes.append(indexes)
            return s

        symbols, y_hat = self._positions(params, step)
        string = self.tables.encode(torch.stack(all_symbols), torch.stack(all_indexes))
        return string, symbols, y_hat

    def _decode_y(self, string: bytes, params: Tensor) -> tuple[Tensor, Tensor]:
        decoder = RansDecoder()
        decoder.set_stream(_padded(string, params.numel() // 2))

        def step(h: int, w: int, indexes: Tensor, mu: Tensor) -> Tensor:
            idx = indexes.tolist()
            used = sorted(set(idx))  # pass only the rows this position uses
            remap = {v: i for i, v in enumerate(used)}
            values = decoder.decode_stream(
                [remap[i] for i in idx], [self.tables.cdf[i] for i in used], [self.tables.lengths[i] for i in used], [self.tables.offsets[i] for i in used]
            )
            return torch.tensor(values, dtype=torch.float64)

        return self._positions(params, step)


class CheckerboardCodec(LatentCodec):
    """Mean-scale hyperprior + checkerboard context: one stream, the anchors' symbols first.

    Anchors (``(h + w)`` even) are coded with ``(σ, μ) = params + entropy_parameters(params, 0)``;
    the other positions with the context of the decoded anchors. Each half is one vectorised
    exact-integer step, so decoding costs two passes of the small networks, not one per position.
    """

    kind = "checkerboard"

    def __init__(self, m: nn.Module) -> None:
        super().__init__(m)
        self.context = ExactNet(m.context.context_prediction)
        self.entropy_parameters = ExactNet(m.context.entropy_parameters)

    def _refined(self, params: Tensor, ctx: Tensor) -> tuple[Tensor, Tensor]:
        """(σ, μ) in fixed point from parameters and context ``(2M, n)`` at n positions (1×1 layers only)."""
        x = torch.cat((params, ctx), 0).unsqueeze(0).unsqueeze(-1)
        out = (params + self.entropy_parameters(x)[0, :, :, 0]).clamp_(-LIMIT, LIMIT)
        return out.chunk(2, 0)

    def _context_of_the_rest(self, y_fixed: Tensor) -> Tensor:
        """The context ``(2M, h, w)`` at the non-anchors (0 elsewhere) from the anchors' fixed-point ŷ.

        The non-anchors form two stride-2 lattices (even rows × odd columns, odd rows × even
        columns); the 5×5 convolution is evaluated on each with stride 2, so no work is spent on
        the anchors. Integer sums: the same bits as the full convolution.
        """
        conv = self.context.ops[0]
        pad = _AR_PAD
        x = F.pad(y_fixed, (pad, pad, pad, pad))
        strided = conv._replace(stride=(2, 2), padding=(0, 0))
        out = torch.zeros((conv.weight.shape[0],) + tuple(y_fixed.shape[2:]), dtype=torch.float64)
        for row in (0, 1):
            col = 1 - row
            if row < y_fixed.shape[2] and col < y_fixed.shape[3]:
                out[:, row::2, col::2] = strided(x[:, :, row:, col:])[0]
        return out

    def _halves(self, params: Tensor, code) -> tuple[Tensor, Tensor]:
        """``code(where, indexes, μ)`` returns the symbols ``(M, n)`` of the anchors, then of the rest
        (``where``: the half's boolean ``(h, w)`` mask; positions in raster order, channels first)."""
        _, _, height, width = params.shape
        channels = params.shape[1] // 2
        anchors = anchor_mask(height, width)[0, 0].bool()
        symbols = torch.zeros((channels, height, width), dtype=torch.float64)
        y_hat = torch.zeros((1, channels, height, width), dtype=torch.float64)
        y_fixed = torch.zeros((1, channels, height, width), dtype=torch.float64)
        ctx = None
        for where in (anchors, ~anchors):
            here = params[0][:, where]
            scales, means = self._refined(here, torch.zeros_like(here) if ctx is None else ctx[:, where])
            s = code(where, self.indexes(scales), from_fixed(means))
            symbols[:, where] = s
            y_hat[0][:, where] = s + from_fixed(means)
            if ctx is None:
                y_fixed[0][:, where] = (s * 2.0**FRACTION_BITS + means).clamp(-LIMIT, LIMIT)
                ctx = self._context_of_the_rest(y_fixed)
        return symbols, y_hat

    def _encode_y(self, y: Tensor, params: Tensor) -> tuple[bytes, Tensor, Tensor]:
        coded: list[tuple[Tensor, Tensor]] = []

        def code(where: Tensor, indexes: Tensor, mu: Tensor) -> Tensor:
            s = torch.round(y[0][:, where] - mu)
            coded.append((s, indexes))
            return s

        symbols, y_hat = self._halves(params, code)
        string = self.tables.encode(torch.cat([s.reshape(-1) for s, _ in coded]), torch.cat([i.reshape(-1) for _, i in coded]))
        return string, symbols, y_hat

    def _decode_y(self, string: bytes, params: Tensor) -> tuple[Tensor, Tensor]:
        decoder = RansDecoder()
        decoder.set_stream(_padded(string, params.numel() // 2))

        def read(where: Tensor, indexes: Tensor, mu: Tensor) -> Tensor:
            values = decoder.decode_stream(indexes.reshape(-1).tolist(), self.tables.cdf, self.tables.lengths, self.tables.offsets)
            return torch.tensor(values, dtype=torch.float64).view(indexes.shape)

        return self._halves(params, read)


CODECS: dict[str, type[LatentCodec]] = {c.kind: c for c in (ScaleCodec, MeanScaleCodec, AutoregressiveCodec, CheckerboardCodec)}


def latent_codec(kind: str, m: nn.Module) -> LatentCodec:
    """The exact codec of ``kind`` over base model ``m``'s hyperprior modules and tables."""
    if kind not in CODECS:
        raise ValueError(f"unknown latent kind {kind!r}; expected one of {LATENT_KINDS}")
    return CODECS[kind](m)


@torch.no_grad()
def decode_latent_float(kind: str, m: nn.Module, strings: list[bytes], z_shape: tuple[int, int], channels: int) -> Tensor:
    """Format 1: strings → ŷ with CompressAI's float ``h_s``. Symbols may differ on other machines."""
    y_string, z_string = strings
    gc = m.gaussian_conditional
    z_hat = m.entropy_bottleneck.decompress([z_string], z_shape)
    if kind == "scale":
        return gc.decompress([y_string], gc.build_indexes(m.h_s(z_hat)))
    if kind == "mean_scale":
        scales, means = m.h_s(z_hat).chunk(2, 1)
        return gc.decompress([y_string], gc.build_indexes(scales), means=means)
    if kind == "autoregressive":
        params = m.h_s(z_hat)
        h, w = z_shape[0] * _Z_TO_Y, z_shape[1] * _Z_TO_Y
        y_pad = torch.zeros((1, channels, h + 2 * _AR_PAD, w + 2 * _AR_PAD), device=z_hat.device)
        m._decompress_ar(y_string, y_pad, params, h, w, _AR_KERNEL, _AR_PAD)
        return F.pad(y_pad, (-_AR_PAD,) * 4)
    if kind == "checkerboard":
        raise ValueError("format 1 predates the checkerboard context: no format-1 file was coded with it")
    raise ValueError(f"unknown latent kind {kind!r}; expected one of {LATENT_KINDS}")
