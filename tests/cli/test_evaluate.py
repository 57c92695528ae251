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


def test_eval_takes_the_anchors_of_an_earlier_run_of_the_same_images(tmp_path, random_default_model, capsys):
    """--baselines-from: an anchor an earlier rd.json measured on the same images (by SHA-256), with the
    same encoder and versions, is taken from it, not encoded again; one it lacks, or one recorded
    with other versions, is encoded; other images are refused in one line."""
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(2):
        Image.fromarray(natural_image(64, 96, seed=i).permute(1, 2, 0).numpy()).save(folder / f"{i}.png")
    weights = tmp_path / "w.pt"
    save_weights(random_default_model, weights)
    run = ["eval", str(folder), "--weights", str(weights), "--quality", "1", "3", "--per-image"]
    assert main([*run, "-o", str(tmp_path / "first"), "--baselines", "jpeg"]) == 0
    first = json.loads((tmp_path / "first" / "rd.json").read_text())
    assert set(first["image_sha256"]) == {"0.png", "1.png"}

    assert main([*run, "-o", str(tmp_path / "second"), "--baselines", "jpeg", "webp", "--baselines-from", str(tmp_path / "first" / "rd.json")]) == 0
    second = json.loads((tmp_path / "second" / "rd.json").read_text())
    jpeg = [p for p in first["per_image"] if p["setting"].startswith("jpeg ")]
    assert [p for p in second["per_image"] if p["setting"].startswith("jpeg ")] == jpeg  # taken: timings included
    assert second["anchors_from"]["taken"] == ["jpeg"] and len(second["curves"]["webp"]) > 3
    assert second["curves"]["jpeg"] == first["curves"]["jpeg"]
    assert second["bd_rate_percent"]["oml-default N=0 vs jpeg"] == first["bd_rate_percent"]["oml-default N=0 vs jpeg"]

    # recorded with another library version: encoded again, said so
    forged = dict(first, anchors={"jpeg": {**first["anchors"]["jpeg"], "versions": {"pillow": "0.0"}}})
    (tmp_path / "forged.json").write_text(json.dumps(forged))
    capsys.readouterr()
    assert main([*run, "-o", str(tmp_path / "third"), "--baselines", "jpeg", "--baselines-from", str(tmp_path / "forged.json")]) == 0
    third = json.loads((tmp_path / "third" / "rd.json").read_text())
    assert third["anchors_from"]["taken"] == [] and "anchor jpeg is encoded again" in capsys.readouterr().err
    assert [p["encode_s"] for p in third["per_image"] if p["setting"].startswith("jpeg ")] != [p["encode_s"] for p in jpeg]

    # one image changed: other images, refused before anything is written
    Image.fromarray(natural_image(64, 96, seed=7).permute(1, 2, 0).numpy()).save(folder / "1.png")
    assert main([*run, "-o", str(tmp_path / "fourth"), "--baselines", "jpeg", "--baselines-from", str(tmp_path / "first" / "rd.json")]) == 2
    err = capsys.readouterr().err
    assert "other images" in err and len(err.strip().splitlines()) == 1 and not (tmp_path / "fourth").exists()
    assert main([*run, "-o", str(tmp_path / "fifth"), "--baselines-from", str(folder / "0.png")]) == 2
    assert "not an rd.json" in capsys.readouterr().err
