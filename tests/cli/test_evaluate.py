"""oml eval end to end on two tiny images: JSON, plot, BD-rates, bit-exact decoding checked inside."""

import json

from PIL import Image

from oml.models.zoo import save_weights
from pipeline.cli import main

from ..conftest import natural_image


def test_eval_writes_json_and_plot(tmp_path, random_default_model, capsys):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(2):
        Image.fromarray(natural_image(64, 96, seed=i).permute(1, 2, 0).numpy()).save(folder / f"{i}.png")
    (folder / "unreadable.png").write_bytes(b"not an image")  # skipped with a line, not fatal
    weights = tmp_path / "w.pt"
    save_weights(random_default_model, weights)
    code = main(["eval", str(folder), "-o", str(tmp_path / "out"), "--weights", str(weights), "--steps", "0", "2",
                 "--baselines", "jpeg", "--per-image"])
    assert code == 0
    result = json.loads((tmp_path / "out" / "rd.json").read_text())
    assert set(result["curves"]) == {"oml-default N=0", "oml-default N=2", "jpeg"}
    assert len(result["curves"]["oml-default N=0"]) == 6  # by default every quality of the group, q1-6
    assert len(result["per_image"]) == 2 * (2 * 6) + 2 * len(result["curves"]["jpeg"])
    assert "oml-default N=0 vs jpeg" in result["bd_rate_percent"]
    adapted, plain = result["curves"]["oml-default N=2"], result["curves"]["oml-default N=0"]
    assert all(a["psnr"] >= p["psnr"] - 1e-9 for a, p in zip(adapted, plain))
    assert (tmp_path / "out" / "rd.png").stat().st_size > 10_000
    captured = capsys.readouterr()
    assert "BD-rate" in captured.out and "skipped" in captured.err and "unreadable.png" in captured.err
