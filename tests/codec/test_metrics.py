"""Invariants of oml.metrics: PSNR, MS-SSIM (against pytorch_msssim), bpp, BD-rate/PSNR."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from oml.metrics import bd_psnr, bd_rate, bpp, ms_ssim, ms_ssim_db, ms_ssim_plan, mse, psnr

from ..conftest import kodak_image



def natural_image(batch: int, height: int, width: int, seed: int = 0) -> torch.Tensor:
    """Smooth random structure plus fine texture, float ``(B, 3, H, W)`` in [0, 1]."""
    gen = torch.Generator().manual_seed(seed)
    coarse = torch.rand(batch, 3, max(height // 16, 2), max(width // 16, 2), generator=gen)
    smooth = F.interpolate(coarse, size=(height, width), mode="bicubic", align_corners=False)
    texture = 0.05 * torch.randn(batch, 3, height, width, generator=gen)
    return (smooth + texture).clamp(0, 1)


def add_noise(x: torch.Tensor, sigma: float, seed: int = 1) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return (x + sigma * torch.randn(x.shape, generator=gen)).clamp(0, 1)


# --- PSNR / MSE ---------------------------------------------------------------------------------


def test_psnr_of_identical_images_is_inf() -> None:
    x = natural_image(2, 16, 16)
    assert torch.isinf(psnr(x, x)).all()


def test_psnr_constant_offset_known_value() -> None:
    x = torch.full((2, 3, 8, 8), 0.5)
    assert torch.allclose(psnr(x, x + 0.1), torch.full((2,), 20.0), atol=1e-4)
    assert torch.allclose(psnr(2 * x, 2 * x + 0.2, data_range=2.0), torch.full((2,), 20.0), atol=1e-4)


def test_psnr_uint8_is_8bit_psnr() -> None:
    x = torch.full((3, 8, 8), 100, dtype=torch.uint8)
    expected = 20 * math.log10(255 / 16)
    assert psnr(x, x + 16).item() == pytest.approx(expected, abs=1e-4)
    assert psnr(x, (x.float() + 16) / 255).item() == pytest.approx(expected, abs=1e-4)


def test_shapes_batched_and_unbatched() -> None:
    x = natural_image(3, 16, 16)
    y = add_noise(x, 0.1)
    assert psnr(x, y).shape == (3,) and mse(x, y).shape == (3,) and ms_ssim(x, y).shape == (3,)
    assert psnr(x[0], y[0]).shape == () and ms_ssim(x[0], y[0]).shape == ()
    assert psnr(x[1], y[1]).item() == pytest.approx(psnr(x, y)[1].item(), rel=1e-6)


@pytest.mark.parametrize(
    ("x", "y", "kwargs", "message"),
    [
        (torch.zeros(3, 8, 8), torch.zeros(3, 8, 9), {}, "same shape"),
        (torch.zeros(8, 8), torch.zeros(8, 8), {}, "expected \\(C, H, W\\)"),
        (torch.zeros(3, 8, 8, dtype=torch.uint8), torch.zeros(3, 8, 8, dtype=torch.uint8), {"data_range": 255.0}, "data_range must be 1.0"),
        (torch.zeros(3, 8, 8), torch.zeros(3, 8, 8), {"data_range": 0.0}, "data_range must be positive"),
        (torch.zeros(3, 8, 8, dtype=torch.int64), torch.zeros(3, 8, 8, dtype=torch.int64), {}, "float or uint8"),
    ],
)
def test_bad_inputs_raise_value_error(x: torch.Tensor, y: torch.Tensor, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        psnr(x, y, **kwargs)
    with pytest.raises(ValueError, match=message):
        ms_ssim(x, y, **kwargs)


# --- MS-SSIM ------------------------------------------------------------------------------------


def test_ms_ssim_of_identical_images_is_one() -> None:
    for size in (256, 64, 7, 1):
        x = natural_image(2, size, size)
        assert torch.allclose(ms_ssim(x, x), torch.ones(2), atol=1e-6)


def test_ms_ssim_decreases_with_noise() -> None:
    x = natural_image(1, 96, 128)
    values = [ms_ssim(x, add_noise(x, s)).item() for s in (0.01, 0.05, 0.1, 0.2)]
    assert all(a > b for a, b in zip(values, values[1:])), values
    assert all(0.0 <= v <= 1.0 for v in values)


def test_ms_ssim_matches_pytorch_msssim() -> None:
    reference = pytest.importorskip("pytorch_msssim")
    x = natural_image(2, 256, 320, seed=3)
    for sigma in (0.02, 0.1):
        y = add_noise(x, sigma)
        ours = ms_ssim(x, y)
        ref = reference.ms_ssim(x, y, data_range=1.0, size_average=False)
        assert torch.allclose(ours, ref, atol=1e-4), (ours, ref)


def test_ms_ssim_matches_pytorch_msssim_on_kodak() -> None:
    reference = pytest.importorskip("pytorch_msssim")
    path = kodak_image("kodim23.png")
    from oml.imageio import decode_image

    x = decode_image(path.read_bytes())[:, :256, :384].float().div(255).unsqueeze(0)
    y = (x * 255 + 6 * torch.randn(x.shape, generator=torch.Generator().manual_seed(0))).round().clamp(0, 255) / 255
    ours = ms_ssim(x, y)
    ref = reference.ms_ssim(x, y, data_range=1.0, size_average=False)
    assert torch.allclose(ours, ref, atol=1e-4), (ours, ref)


def test_ms_ssim_is_differentiable() -> None:
    x = natural_image(2, 64, 64)
    y = add_noise(x, 0.1).requires_grad_(True)
    (1 - ms_ssim(x, y)).sum().backward()
    assert y.grad is not None and torch.isfinite(y.grad).all() and y.grad.abs().sum() > 0


def test_ms_ssim_anticorrelated_is_zero_with_finite_gradient() -> None:
    x = natural_image(1, 64, 64)
    y = (1 - x).requires_grad_(True)
    value = ms_ssim(x, y)
    value.sum().backward()
    assert value.item() == pytest.approx(0.0, abs=1e-6)
    assert torch.isfinite(y.grad).all()


def test_ms_ssim_plan_scales_with_size() -> None:
    assert len(ms_ssim_plan(161, 300).weights) == 5
    assert ms_ssim_plan(161, 300).weights == (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
    assert len(ms_ssim_plan(160, 300).weights) == 4
    assert len(ms_ssim_plan(32, 32).weights) == 2
    small = ms_ssim_plan(8, 20)
    assert small.window == 7 and small.weights == (1.0,)
    for h in (1, 11, 22, 50, 100, 160):
        assert sum(ms_ssim_plan(h, h).weights) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="at least 1x1"):
        ms_ssim_plan(0, 5)


def test_ms_ssim_db() -> None:
    assert ms_ssim_db(0.9) == pytest.approx(10.0)
    assert ms_ssim_db(1.0) == math.inf
    assert torch.allclose(ms_ssim_db(torch.tensor([0.9, 0.99])), torch.tensor([10.0, 20.0]))
    with pytest.raises(ValueError, match="at most 1"):
        ms_ssim_db(1.5)


# --- bpp and Bjøntegaard ------------------------------------------------------------------------


def test_bpp() -> None:
    assert bpp(768 * 512 // 8, 512, 768) == pytest.approx(1.0)
    assert bpp(0, 10, 10) == 0.0
    with pytest.raises(ValueError, match="at least 1x1"):
        bpp(10, 0, 10)
    with pytest.raises(ValueError, match="non-negative"):
        bpp(-1, 10, 10)


RATES = [0.12, 0.25, 0.5, 0.9, 1.4]
PSNRS = [27.1, 29.6, 32.4, 34.8, 36.9]


def test_bd_rate_scaled_rates_is_exact() -> None:
    assert bd_rate(RATES, PSNRS, [0.8 * r for r in RATES], PSNRS) == pytest.approx(-20.0, abs=1e-9)
    assert bd_rate(RATES, PSNRS, [1.25 * r for r in RATES], PSNRS) == pytest.approx(25.0, abs=1e-9)
    assert bd_rate(RATES, PSNRS, RATES, PSNRS) == pytest.approx(0.0, abs=1e-9)


def test_bd_psnr_shifted_curve_is_exact() -> None:
    assert bd_psnr(RATES, PSNRS, RATES, [p + 0.5 for p in PSNRS]) == pytest.approx(0.5, abs=1e-9)
    assert bd_psnr(RATES, PSNRS, [0.8 * r for r in RATES], PSNRS) > 0


def test_bd_rate_for_log_linear_curves_with_shift() -> None:
    # log(rate) = a + b * PSNR, so +d dB at equal rate means rate × exp(-b d) at equal PSNR.
    slope, shift = 0.2, 0.5
    psnr_a = [28.0, 30.0, 32.0, 34.0, 36.0]
    rates = [math.exp(-6.0 + slope * p) for p in psnr_a]
    psnr_b = [p + shift for p in psnr_a]
    assert bd_rate(rates, psnr_a, rates, psnr_b) == pytest.approx((math.exp(-slope * shift) - 1) * 100, abs=1e-9)
    assert bd_psnr(rates, psnr_a, rates, psnr_b) == pytest.approx(shift, abs=1e-9)


def test_bd_rate_errors() -> None:
    with pytest.raises(ValueError, match="at least 4"):
        bd_rate(RATES[:3], PSNRS[:3], RATES, PSNRS)
    with pytest.raises(ValueError, match="overlap"):
        bd_rate(RATES, PSNRS, RATES, [p + 20 for p in PSNRS])
    with pytest.raises(ValueError, match="overlap"):
        bd_psnr(RATES, PSNRS, [100 * r for r in RATES], PSNRS)
    with pytest.raises(ValueError, match="5 rates but 4 distortions"):
        bd_rate(RATES, PSNRS[:4], RATES, PSNRS)
    with pytest.raises(ValueError, match="rates must be positive"):
        bd_rate([0.0, *RATES[1:]], PSNRS, RATES, PSNRS)


def test_import_pulls_no_pipeline_dependencies() -> None:
    code = "import sys, oml.metrics, oml.baselines; print(sorted({'ray','fsspec','s3fs','pyarrow'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
