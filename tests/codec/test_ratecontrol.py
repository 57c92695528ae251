"""Rate control (--target-psnr / --target-bpp): the search over the continuous λ of the shipped model."""

from __future__ import annotations

import pytest

from oml import codec, ratecontrol
from oml.imageio import decode_image
from oml.models.zoo import load_model
from pipeline.cli import main

from ..conftest import kodak_image


@pytest.fixture(scope="module")
def crop():
    return decode_image(kodak_image("kodim07.png").read_bytes())[:, 100:292, 200:392].contiguous()


@pytest.fixture(scope="module")
def model():
    return load_model("oml-default", 1)


@pytest.mark.parametrize("kind,fraction", [("psnr", 0.35), ("psnr", 0.8), ("bpp", 0.3), ("bpp", 0.7)])
def test_targets_inside_the_range_are_met_by_the_file_itself(crop, model, kind, fraction):
    ends = [codec.encode(model, crop, lmbda=lm) for lm in model.lambda_range]
    values = [ratecontrol.image_psnr(e.reconstruction, crop) if kind == "psnr" else 8 * len(e.data) / crop[0].numel() for e in ends]
    target = ratecontrol.Target(kind, values[0] + fraction * (values[1] - values[0]))
    result = ratecontrol.encode_to_target(model, crop, target)
    # measured on the bytes and the decoder's output, not on the search's own numbers
    decoded = codec.decode(model, result.encoded.data)
    psnr = ratecontrol.image_psnr(decoded, crop)
    bpp = 8 * len(result.encoded.data) / crop[0].numel()
    if kind == "psnr":
        assert abs(psnr - target.value) <= 0.1, (psnr, target)
    else:
        assert abs(bpp - target.value) <= 0.03 * target.value, (bpp, target)
    assert (result.psnr, result.bpp) == (pytest.approx(psnr, abs=1e-9), bpp)
    assert model.lambda_range[0] < result.lmbda < model.lambda_range[1]
    assert 3 <= len(result.trials) <= ratecontrol.MAX_EVALUATIONS


def test_targets_outside_the_range_name_the_reachable_range(crop, model):
    for target in (ratecontrol.Target("psnr", 60.0), ratecontrol.Target("bpp", 0.001)):
        with pytest.raises(ratecontrol.TargetOutOfRange, match=r"outside what oml-default reaches on this image: .* to .*"):
            ratecontrol.encode_to_target(model, crop, target)
    with pytest.raises(ValueError, match="must be a positive number"):
        ratecontrol.Target("bpp", -1.0)


def test_the_cli_reports_what_each_image_reached_and_refuses_unreachable_targets(tmp_path, crop, capsys):
    from oml.imageio import encode_png

    src = tmp_path / "c.png"
    src.write_bytes(encode_png(crop))
    assert main(["compress", str(src), "-o", str(tmp_path / "c.oml"), "--target-psnr", "99"]) == 1
    err = capsys.readouterr().err
    assert "target 99.00 dB is outside what oml-default reaches on this image" in err and "Traceback" not in err
    assert not (tmp_path / "c.oml").exists()
    assert main(["compress", str(src), "-o", str(tmp_path / "c.oml"), "--target-bpp", "0.5"]) == 0
    out = capsys.readouterr().out
    assert "target 0.5000 bpp: reached 0.4" in out or "target 0.5000 bpp: reached 0.5" in out, out
    with pytest.raises(SystemExit) as exit_info:  # a target or a quality, not both
        main(["compress", str(src), "-o", str(tmp_path / "d.oml"), "--target-bpp", "0.5", "--quality", "2"])
    assert exit_info.value.code == 2 and "not allowed with argument" in capsys.readouterr().err
