"""Hyper-decoders in exact integer arithmetic, so that every machine decodes the same symbols.

After: J. Ballé, N. Johnston, D. Minnen, "Integer Networks for Data Compression
with Latent-Variable Models", ICLR 2019 (openreview.net/forum?id=S1zz2i0cY7).

The entropy decoder picks each symbol's CDF from a scale computed by the
hyper-decoder ``h_s`` (and, for autoregressive models, by the context model).
Computed in floating point, that scale differs in its last bits between CPU
kernels, thread counts and devices; a scale next to a table boundary then picks
another CDF and the range decoder desynchronises for the rest of the tile
(measured: one index of 131 072 flipped on kodim05 under other kernels, and
65 % of the pixels came back wrong).

Here a trained float network is converted, layer by layer, into fixed point:

- activations are integers in units of 2^-:data:`FRACTION_BITS`, clamped to
  ±2^:data:`RANGE_BITS` real units;
- each output channel's weights are integers ``round(w · 2^e_c)`` with
  ``|w_int| ≤ 2^15``, its bias ``round(b · 2^(e_c + FRACTION_BITS))``;
- ``e_c`` is lowered until the largest possible accumulator,
  ``Σ|w_int| · clamp + |b_int|``, is below 2^53.

The integers are held in float64 tensors, so every product and partial sum is
an integer below 2^53, exactly representable: any summation order, blocking,
vectorisation or thread split gives the same bits (convolutions run on the CPU
with im2col + GEMM; no FFT or Winograd path exists for float64). Rescaling
multiplies by powers of two (exact) and rounds; the nonlinearities are single
IEEE operations (correctly rounded everywhere). The conversion itself uses only
exact operations (power-of-two scaling, ``round``), so the integer network is a
pure function of the stored weights.

The cost in rate is measured in docs/RESULTS.md: 16 fractional bits keep the
scales within ~2^-16 of the float network's, far below the 12 % spacing of the
scale table.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

FRACTION_BITS = 16
RANGE_BITS = 12
WEIGHT_BITS = 15
LIMIT = math.ldexp(1.0, FRACTION_BITS + RANGE_BITS)  # largest fixed-point activation (integer units)
_EXACT = 2.0**53


class NotPortableError(ValueError):
    """A network holds a layer that has no exact integer counterpart here."""


def _pow2(exponents: list[int]) -> Tensor:
    return torch.tensor([math.ldexp(1.0, e) for e in exponents], dtype=torch.float64)


def to_fixed(x: Tensor) -> Tensor:
    """Real values → fixed-point integers (float64), clamped to the activation range."""
    return torch.round(x.detach().double().cpu() * math.ldexp(1.0, FRACTION_BITS)).clamp_(-LIMIT, LIMIT)


def from_fixed(x: Tensor) -> Tensor:
    """Fixed-point integers → their exact real values (float64)."""
    return x * math.ldexp(1.0, -FRACTION_BITS)


class _Conv(NamedTuple):
    weight: Tensor  # integers, float64
    bias: Tensor  # integers at scale 2^(e_c + FRACTION_BITS)
    inverse: Tensor  # 2^-e_c per output channel
    transposed: bool
    stride: tuple[int, int]
    padding: tuple[int, int]
    output_padding: tuple[int, int]

    def __call__(self, x: Tensor) -> Tensor:
        if self.transposed:
            acc = F.conv_transpose2d(x, self.weight, None, self.stride, self.padding, self.output_padding)
        else:
            acc = F.conv2d(x, self.weight, None, self.stride, self.padding)
        acc = acc + self.bias.view(1, -1, 1, 1)
        return torch.floor(acc * self.inverse.view(1, -1, 1, 1) + 0.5).clamp_(-LIMIT, LIMIT)


class _LeakyReLU(NamedTuple):
    slope: float

    def __call__(self, x: Tensor) -> Tensor:
        return torch.where(x < 0, torch.floor(x * self.slope), x)


class _ReLU(NamedTuple):
    def __call__(self, x: Tensor) -> Tensor:
        return x.clamp(min=0)


class _PixelShuffle(NamedTuple):
    factor: int

    def __call__(self, x: Tensor) -> Tensor:
        return F.pixel_shuffle(x, self.factor)


def _conv(module: nn.Module) -> _Conv:
    """Fixed-point weights of a Conv2d / ConvTranspose2d (a masked convolution keeps its mask)."""
    transposed = isinstance(module, nn.ConvTranspose2d)
    if module.groups != 1 or module.dilation != (1, 1) or module.padding_mode != "zeros":
        raise NotPortableError(f"{type(module).__name__} with groups/dilation/padding mode is not supported")
    w = module.weight.detach().double().cpu()
    mask = getattr(module, "mask", None)
    if mask is not None:
        w = w * mask.double().cpu()
    b = module.bias.detach().double().cpu() if module.bias is not None else torch.zeros(w.shape[1 if transposed else 0], dtype=torch.float64)
    w_out = w.transpose(0, 1) if transposed else w  # (C_out, C_in, k, k)
    max_abs = w_out.abs().flatten(1).amax(1).tolist()
    exps = [WEIGHT_BITS - math.frexp(m)[1] if m > 0 else 0 for m in max_abs]
    while True:
        w_int = torch.round(w_out * _pow2(exps).view(-1, 1, 1, 1))
        b_int = torch.round(b * _pow2([e + FRACTION_BITS for e in exps]))
        bound = (w_int.abs().flatten(1).sum(1) * LIMIT + b_int.abs()).tolist()
        over = [i for i, v in enumerate(bound) if v >= _EXACT]
        if not over:
            break
        for i in over:
            exps[i] -= 1
    weight = w_int.transpose(0, 1).contiguous() if transposed else w_int
    return _Conv(weight, b_int, _pow2([-e for e in exps]), transposed, module.stride, module.padding, getattr(module, "output_padding", (0, 0)))


def _layers(module: nn.Module) -> Iterator[nn.Module]:
    if isinstance(module, nn.Sequential):
        for child in module:
            yield from _layers(child)
    else:
        yield module


class ExactNet:
    """A float ``nn.Sequential`` of convolutions and pointwise nonlinearities, in fixed point.

    Call it on fixed-point integers (:func:`to_fixed`) ``(B, C, H, W)`` float64 on the CPU;
    it returns fixed-point integers.
    """

    def __init__(self, module: nn.Module) -> None:
        self.ops: list = []
        for layer in _layers(module):
            if isinstance(layer, (nn.Conv2d, nn.ConvTranspose2d)):
                self.ops.append(_conv(layer))
            elif isinstance(layer, nn.LeakyReLU):
                self.ops.append(_LeakyReLU(float(layer.negative_slope)))
            elif isinstance(layer, nn.ReLU):
                self.ops.append(_ReLU())
            elif isinstance(layer, nn.PixelShuffle):
                self.ops.append(_PixelShuffle(int(layer.upscale_factor)))
            elif isinstance(layer, nn.Identity):
                continue
            else:
                raise NotPortableError(f"no exact integer version of {type(layer).__name__}")

    @torch.no_grad()
    def __call__(self, x: Tensor) -> Tensor:
        for op in self.ops:
            x = op(x)
        return x
