"""Invariants of oml.baselines (the classical anchors): real byte counts, monotone rate and quality in the codec setting, 4:4:4 where named, a missing plugin skipped with a note."""

from __future__ import annotations


import pytest
import torch
import torch.nn.functional as F

from oml import baselines
from oml.baselines import (
    CODECS,
    DEFAULT_QUALITIES,
    BaselineResult,
    CodecUnavailableError,
    decode,
    encode,
    evaluate,
    sweep,
)
from oml.metrics import psnr

from ..conftest import kodak_image



def synthetic_image(height: int = 64, width: int = 96, seed: int = 0) -> torch.Tensor:
    """uint8 ``(3, H, W)`` with smooth regions, edges and texture."""
    gen = torch.Generator().manual_seed(seed)
    coarse = torch.rand(1, 3, height // 8, width // 8, generator=gen)
    smooth = F.interpolate(coarse, size=(height, width), mode="bicubic", align_corners=False)[0]
    texture = 0.04 * torch.randn(3, height, width, generator=gen)
    edges = (torch.arange(width) // 12 % 2).float().expand(height, width) * 0.15
    return ((smooth + texture + edges).clamp(0, 1) * 255).round().to(torch.uint8)


@pytest.mark.parametrize("codec", sorted(CODECS))
def test_sweep_rate_and_quality_are_monotone(codec: str) -> None:
    image = synthetic_image()
    results = sweep(image, codec, [10, 45, 90])
    assert [r.quality for r in results] == [10, 45, 90]
    rates = [r.bpp for r in results]
    psnrs = [r.psnr for r in results]
    ms_ssims = [r.ms_ssim for r in results]
    assert rates[0] < rates[1] < rates[2], rates
    assert psnrs[0] < psnrs[1] < psnrs[2], psnrs
    assert ms_ssims[0] < ms_ssims[2] <= 1.0, ms_ssims


@pytest.mark.parametrize("codec", sorted(CODECS))
def test_byte_counts_are_real_encoded_lengths(codec: str) -> None:
    image = synthetic_image(48, 40, seed=1)
    result = evaluate(image, codec, 50)
    data = encode(image, codec, 50)
    assert isinstance(result, BaselineResult) and result.codec == codec
    assert result.num_bytes == len(data)
    assert result.bpp == pytest.approx(8 * len(data) / (48 * 40))
    recon = decode(data)
    assert recon.shape == image.shape and recon.dtype == torch.uint8
    assert result.psnr == pytest.approx(psnr(image, recon).item())


def test_default_qualities_are_sorted_and_long_enough() -> None:
    assert set(DEFAULT_QUALITIES) == set(CODECS)
    for codec, qualities in DEFAULT_QUALITIES.items():
        assert len(qualities) >= 6, codec
        assert list(qualities) == sorted(set(qualities)), codec


def test_kodak_jpeg_defaults_span_the_target_range() -> None:
    path = kodak_image("kodim01.png")
    from oml.imageio import decode_image

    results = sweep(decode_image(path.read_bytes()), "jpeg")
    rates = [r.bpp for r in results]
    assert rates == sorted(rates)
    assert rates[0] < 0.3 and rates[-1] > 1.2, rates
    psnrs = [r.psnr for r in results]
    assert psnrs == sorted(psnrs) and 15.0 < psnrs[0] and psnrs[-1] < 45.0, psnrs


@pytest.mark.parametrize(
    ("image", "codec", "quality", "message"),
    [
        (synthetic_image(), "png", 50, "unknown codec 'png'"),
        (synthetic_image(), "jpeg", 0, "jpeg quality must be in"),
        (synthetic_image(), "webp", 101, "webp quality must be in"),
        (synthetic_image(), "avif", 50.5, "quality must be an int"),
        (synthetic_image().float() / 255, "jpeg", 50, "expected a uint8 image"),
        (synthetic_image()[:2], "jpeg", 50, "expected an RGB image"),
        (synthetic_image()[None], "jpeg", 50, "expected an RGB image"),
    ],
)
def test_bad_inputs_raise_value_error(image: torch.Tensor, codec: str, quality: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        evaluate(image, codec, quality)  # type: ignore[arg-type]


def test_empty_quality_list_raises() -> None:
    with pytest.raises(ValueError, match="empty"):
        sweep(synthetic_image(), "jpeg", [])


def test_missing_avif_support_fails_clearly(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(baselines.features, "check", lambda name: name != "avif")
    with pytest.raises(CodecUnavailableError, match="AVIF"):
        encode(synthetic_image(), "avif", 50)
    assert len(encode(synthetic_image(), "jpeg", 50)) > 0


def _chroma_stripes() -> torch.Tensor:
    """Red and blue one-pixel columns: detail only 4:4:4 chroma keeps."""
    image = torch.zeros(3, 64, 64, dtype=torch.uint8)
    image[0, :, 0::2] = 220
    image[2, :, 1::2] = 220
    return image


@pytest.mark.parametrize("codec", ["avif444", "hevc"])
def test_the_444_anchors_keep_full_resolution_chroma(codec: str) -> None:
    """avif444 and hevc code chroma at full resolution (4:2:0 would halve it and blur the stripes)."""
    try:
        baselines.describe(codec)
    except CodecUnavailableError as exc:
        pytest.skip(str(exc))
    image = _chroma_stripes()
    assert evaluate(image, codec, 90).psnr > evaluate(image, "avif", 90).psnr + 6


def test_a_missing_plugin_names_its_package_and_eval_skips_it_with_a_note(monkeypatch, tmp_path, capsys, random_default_model) -> None:
    import json
    import sys

    from PIL import Image

    from oml.models.zoo import save_weights
    from pipeline.evaluate import EvalConfig, run_eval

    monkeypatch.setitem(sys.modules, "pillow_jxl", None)  # as if the plugin were not installed
    with pytest.raises(CodecUnavailableError, match="pip install pillow-jxl-plugin"):
        encode(synthetic_image(), "jxl", 50)
    folder = tmp_path / "imgs"
    folder.mkdir()
    Image.fromarray(synthetic_image(64, 64).permute(1, 2, 0).numpy()).save(folder / "a.png")
    save_weights(random_default_model, tmp_path / "w.pt")
    result = run_eval(EvalConfig(str(folder), str(tmp_path / "out"), weights=str(tmp_path / "w.pt"), qualities=(1, 2, 3, 4), baselines=("jpeg", "jxl")))
    assert "jxl" in result["anchors_skipped"] and "jxl" not in result["curves"] and "jpeg" in result["anchors"]
    assert "anchor jxl skipped" in capsys.readouterr().err
    stored = json.loads((tmp_path / "out" / "rd.json").read_text())
    key = "oml-default N=0 vs jpeg"
    span = stored["bd_rate_psnr_range_db"][key]  # None where the curves share no PSNR range: no BD-rate then
    assert (span is None) == isinstance(stored["bd_rate_percent"][key], str)
    assert span is None or span[0] < span[1]
