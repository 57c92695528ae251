"""The fixed-point hyper-decoders: faithful to the float network, exact by construction."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from oml.models.exact import FRACTION_BITS, RANGE_BITS, ExactNet, NotPortableError, from_fixed, to_fixed


def hyper_decoder() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.ConvTranspose2d(8, 16, 5, stride=2, padding=2, output_padding=1),
        nn.LeakyReLU(),
        nn.Conv2d(16, 16 * 4, 3, padding=1),
        nn.PixelShuffle(2),
        nn.ReLU(),
        nn.Conv2d(16, 24, 3, padding=1),
    )


def test_the_integer_network_follows_the_float_one():
    net = hyper_decoder()
    z = torch.randn(1, 8, 6, 5) * 3
    out = from_fixed(ExactNet(net)(to_fixed(z)))
    with torch.no_grad():
        ref = net(z).double()
    assert out.shape == ref.shape
    assert float((out - ref).abs().max()) < 1e-3 * float(ref.abs().max())
    assert torch.equal(out * 2.0**FRACTION_BITS, torch.round(out * 2.0**FRACTION_BITS))  # fixed point


def test_no_accumulator_can_leave_the_exact_range():
    """For every layer: Σ|w_int| · (largest activation) + |b_int| < 2^53, so sums are exact in any order."""
    net = nn.Sequential(nn.Conv2d(64, 32, 3), nn.Conv2d(32, 8, 1))
    with torch.no_grad():
        net[0].weight.mul_(1e-6)  # tiny weights push the exponent up, until the bound stops it
        net[0].bias.fill_(50.0)
    largest = math.ldexp(1.0, FRACTION_BITS + RANGE_BITS)
    for op in ExactNet(net).ops:
        bound = op.weight.abs().flatten(1).sum(1) * largest + op.bias.abs()
        assert float(bound.max()) < 2.0**53
        assert torch.equal(op.weight, torch.round(op.weight)) and torch.equal(op.bias, torch.round(op.bias))


def test_extreme_inputs_are_clamped_not_inexact():
    net = hyper_decoder()
    exact = ExactNet(net)
    huge = to_fixed(torch.full((1, 8, 4, 4), 1e30))
    assert float(huge.abs().max()) == 2.0 ** (FRACTION_BITS + RANGE_BITS)
    assert torch.equal(exact(huge), exact(huge.clone()))


def test_layers_without_an_exact_version_are_refused():
    with pytest.raises(NotPortableError, match="no exact integer version of Sigmoid"):
        ExactNet(nn.Sequential(nn.Conv2d(2, 2, 1), nn.Sigmoid()))
