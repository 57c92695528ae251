"""Entropy coding of one latent with a base model's own hyperprior.

Three kinds, matching CompressAI's models:

- ``scale``: Ballé 2018 scale hyperprior (``bmshj2018-hyperprior``): ``z = h_a(|y|)``,
  zero-mean Gaussian conditional.
- ``mean_scale``: Minnen 2018 mean-scale hyperprior (``mbt2018-mean``, the default model).
- ``autoregressive``: Minnen 2018 joint autoregressive + hierarchical prior
  (``mbt2018``, ``cheng2020-*``), coded position by position with the base model's
  masked context model.

Every encoder returns ŷ computed exactly as the matching decoder recomputes it
from the strings (``round(y − μ) + μ`` in the same float operations), so the
decoder's ŷ equals the encoder's bit for bit on the same machine.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

LATENT_KINDS = ("scale", "mean_scale", "autoregressive")

_AR_KERNEL = 5
_AR_PAD = (_AR_KERNEL - 1) // 2
_Z_TO_Y = 4  # spatial scale between z and y in every supported model


class LatentCode(NamedTuple):
    """One tile's coded latent: ``strings = [y_string, z_string]``, z's spatial shape, and ŷ ``(1, M, h, w)``."""

    strings: list[bytes]
    z_shape: tuple[int, int]
    y_hat: Tensor


def _code_z(m: nn.Module, z: Tensor) -> tuple[bytes, Tensor]:
    z_strings = m.entropy_bottleneck.compress(z)
    return z_strings[0], m.entropy_bottleneck.decompress(z_strings, z.shape[-2:])


@torch.no_grad()
def encode_latent(kind: str, m: nn.Module, y: Tensor) -> LatentCode:
    """Entropy-code y ``(1, M, h, w)`` with the hyperprior modules of ``m``."""
    if y.shape[0] != 1:
        raise ValueError("latents are coded one tile at a time (batch size 1)")
    gc = m.gaussian_conditional
    z = m.h_a(torch.abs(y) if kind == "scale" else y)
    z_string, z_hat = _code_z(m, z)
    z_shape = (int(z.shape[2]), int(z.shape[3]))
    if kind == "scale":
        scales = m.h_s(z_hat)
        y_string = gc.compress(y, gc.build_indexes(scales))[0]
        return LatentCode([y_string, z_string], z_shape, gc.quantize(y, "dequantize"))
    if kind == "mean_scale":
        scales, means = m.h_s(z_hat).chunk(2, 1)
        y_string = gc.compress(y, gc.build_indexes(scales), means=means)[0]
        return LatentCode([y_string, z_string], z_shape, gc.quantize(y, "dequantize", means))
    if kind == "autoregressive":
        params = m.h_s(z_hat)
        y_pad = F.pad(y, (_AR_PAD,) * 4)
        # CompressAI's coder writes ŷ into y_pad position by position as it codes.
        y_string = m._compress_ar(y_pad, params, y.shape[2], y.shape[3], _AR_KERNEL, _AR_PAD)
        return LatentCode([y_string, z_string], z_shape, F.pad(y_pad, (-_AR_PAD,) * 4))
    raise ValueError(f"unknown latent kind {kind!r}; expected one of {LATENT_KINDS}")


@torch.no_grad()
def decode_latent(kind: str, m: nn.Module, strings: list[bytes], z_shape: tuple[int, int], channels: int) -> Tensor:
    """Strings → ŷ ``(1, M, 4·z_h, 4·z_w)``, the inverse of :func:`encode_latent`."""
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
    raise ValueError(f"unknown latent kind {kind!r}; expected one of {LATENT_KINDS}")
