"""Encoder effort levels: what each means, that --steps and --refine override them, on the command line too."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from oml import codec
from oml.effort import ARCHIVAL_REFINE, coding_effort
from oml.names import DEFAULT_EFFORT, EFFORTS
from pipeline.cli import main

from ..conftest import natural_image


def test_each_effort_level_and_its_overrides():
    fast, default, archival = (coding_effort(name) for name in EFFORTS)
    assert not fast.adapt.enabled and fast.refine.iterations == 0
    assert default.adapt.quick and default.adapt.steps == 0 and default.refine.iterations == 0
    assert archival.adapt.quick and archival.refine.iterations == ARCHIVAL_REFINE
    paper = coding_effort("archival", ("ms-ssim",), steps=5, refine=0)
    assert (paper.adapt.steps, paper.adapt.quick, paper.adapt.metrics, paper.refine.iterations) == (5, False, ("ms-ssim",), 0)
    assert not coding_effort("default", steps=0).adapt.enabled
    with pytest.raises(ValueError, match="effort must be one of"):
        coding_effort("slow")


@pytest.fixture
def weights(tmp_path, random_default_model):
    from oml.models.zoo import save_weights

    path = tmp_path / "w.pt"
    save_weights(random_default_model, path)
    return str(path)


@pytest.mark.parametrize(
    ("flags", "sets", "adapted"),
    [
        (["--effort", "fast"], ("plain",), False),
        (["--effort", "default"], ("psnr",), True),
        (["--effort", "default", "--steps", "0"], ("plain",), False),
        (["--effort", "fast", "--steps", "2"], ("psnr",), True),
        (["--effort", "archival", "--refine", "0", "--metric", "psnr", "ms-ssim"], ("psnr", "ms-ssim"), True),
    ],
)
def test_compress_codes_at_the_effort_asked(tmp_path, weights, flags, sets, adapted):
    src = tmp_path / "a.png"
    Image.fromarray(natural_image(96, 128, seed=3).permute(1, 2, 0).numpy()).save(src)
    out = tmp_path / "a.oml"
    assert main(["compress", str(src), "-o", str(out), "--weights", weights, "-q", "2", *flags]) == 0
    header, records = codec.read(out.read_bytes())
    assert header.metrics == sets
    moved = any(not bool((rec.lambdas == codec.plain_lambdas(4, header.lmbda)).all()) for rec in records)
    assert moved == adapted


def test_the_default_effort_is_a_known_level():
    assert DEFAULT_EFFORT in EFFORTS


def test_eval_draws_one_curve_per_effort(tmp_path, weights):
    folder = tmp_path / "imgs"
    folder.mkdir()
    Image.fromarray(natural_image(64, 96, seed=1).permute(1, 2, 0).numpy()).save(folder / "0.png")
    code = main(["eval", str(folder), "-o", str(tmp_path / "out"), "--weights", weights, "--effort", "fast", "default", "--baselines", "jpeg", "-q", "1", "2", "3", "4"])
    assert code == 0
    result = json.loads((tmp_path / "out" / "rd.json").read_text())
    assert set(result["curves"]) == {"oml-default effort=fast", "oml-default effort=default", "jpeg"}
    fast, default = result["curves"]["oml-default effort=fast"], result["curves"]["oml-default effort=default"]
    assert all(d["psnr"] >= f["psnr"] - 1e-9 and d["bpp"] <= f["bpp"] for d, f in zip(default, fast))  # "psnr" is 1 byte shorter than "plain"
    assert "oml-default effort=default vs oml-default effort=fast" in result["bd_rate_percent"]


def test_the_effort_benchmark_runs_every_preset_and_reports_ratios_and_bd_rates(tmp_path):
    """bench/effort.py (the per-GPU throughput benchmark of the presets) on a CPU, tiny: every preset
    is timed, decoded exactly, and compared with fast and with an anchor."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("effort_bench", Path(__file__).resolve().parents[2] / "bench" / "effort.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    folder = tmp_path / "imgs"
    folder.mkdir()
    Image.fromarray(natural_image(96, 96, seed=5).permute(1, 2, 0).numpy()).save(folder / "a.png")
    assert bench.main([str(folder), "--out", str(tmp_path / "out"), "--crop", "64", "--refine", "2", "--quality", "1", "2", "3", "4", "--anchors", "jpeg"]) == 0
    result = json.loads((tmp_path / "out" / "effort.json").read_text())
    assert list(result["efforts"]) == list(EFFORTS)
    fast, default, archival = (result["efforts"][n] for n in EFFORTS)
    assert fast["encode_vs_fast"] == 1.0 and archival["refine"] == 2 and default["adaptation"] == "quick"
    assert all(isinstance(row["bd_rate_vs_anchor"]["jpeg"], float) for row in (fast, default, archival))
    assert isinstance(default["bd_rate_vs_fast"], float) and default["bd_rate_vs_fast"] <= 0.0
