"""Bounded reads: a rectangle of a source streamed by pyvips equals the same rectangle of Pillow's
decode, and a unit coded from it writes the same bytes as one coded from the whole image."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from oml import tiling
from oml.imageio import decode_image

from ..conftest import natural_image

regions = pytest.importorskip("pipeline.archive.regions")
archive = pytest.importorskip("pipeline.archive")
needs_pyvips = pytest.mark.skipif(not regions.available(), reason="pyvips is not installed (pip install 'oml-archive[regions]')")

RGB = natural_image(300, 420, 1).permute(1, 2, 0).numpy()
RECT = tiling.Tile(128, 100, 150, 300)


def _save(path, image: Image.Image) -> str:
    image.save(path, quality=90) if path.suffix == ".jpg" else image.save(path)
    return str(path)


@needs_pyvips
@pytest.mark.parametrize(
    "name,make",
    [
        ("rgb.png", lambda: Image.fromarray(RGB)),
        ("rgba.png", lambda: Image.fromarray(np.dstack([RGB, RGB[..., :1]]))),
        ("grey.png", lambda: Image.fromarray(RGB[..., 0])),
        ("grey-alpha.png", lambda: Image.fromarray(np.dstack([RGB[..., 0], RGB[..., 1]]), "LA")),
        ("palette.png", lambda: Image.fromarray(RGB).convert("P")),
        ("colour.jpg", lambda: Image.fromarray(RGB)),
        ("grey.jpg", lambda: Image.fromarray(RGB[..., 0])),
    ],
)
def test_a_streamed_rectangle_equals_pillows_pixels(tmp_path, name, make):
    path = _save(tmp_path / name, make())
    full = decode_image(open(path, "rb").read())
    window = regions.read_region(path, RECT, 420, 300)
    assert window is not None and torch.equal(window, full[:, RECT.top : RECT.top + RECT.height, RECT.left : RECT.left + RECT.width])


@needs_pyvips
def test_sources_pillow_must_decode_are_left_to_it(tmp_path):
    sixteen = _save(tmp_path / "deep.png", Image.fromarray(RGB[..., 0].astype(np.uint16) * 257))
    exif = Image.Exif()
    exif[0x0112] = 6
    rotated = tmp_path / "rotated.jpg"
    Image.fromarray(RGB).save(rotated, exif=exif)
    webp = _save(tmp_path / "a.webp", Image.fromarray(RGB))
    assert regions.read_region(sixteen, RECT, 420, 300) is None
    assert regions.read_region(str(rotated), tiling.Tile(0, 0, 10, 10), 300, 420) is None
    assert regions.read_region(webp, RECT, 420, 300) is None


@needs_pyvips
def test_a_truncated_source_fails_where_its_data_ends(tmp_path):
    data = open(_save(tmp_path / "a.png", Image.fromarray(RGB)), "rb").read()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(regions.RegionError, match="corrupt or truncated image"):
        regions.read_region(str(tmp_path / "cut.png"), tiling.Tile(256, 0, 44, 420), 420, 300)
    assert regions.read_region(str(tmp_path / "cut.png"), tiling.Tile(0, 0, 10, 420), 420, 300).shape == (3, 10, 420)


@needs_pyvips
def test_a_unit_coded_from_a_streamed_band_writes_the_same_bytes(tmp_path, monkeypatch):
    """The middle of an image (a piece of 3 rectangles) coded from its band and from the whole image:
    the same Parquet files, so the same ``oml`` bytes, and the same source checksum."""
    from pipeline import storage
    from pipeline.archive import plan

    _save(tmp_path / "a.png", Image.fromarray(RGB))
    [image] = plan.probe_all(storage.list_files(str(tmp_path / "a.png"), (".png",)), 10**6)
    unit = archive.Unit(0, (archive.Piece(image, 2, 6),))
    first = archive.Unit(1, (archive.Piece(image, 0, 1),))
    model_cfg = archive.ModelConfig(pretrained=False)
    coding = archive.CodingConfig(quality=1, tile=128)
    fingerprint = archive.get_model(model_cfg, 1).fingerprint(1).hex()
    outputs = {}
    real_read = storage.read_bytes
    for name, vips in (("streamed", regions.pyvips), ("pillow", None)):
        monkeypatch.setattr(regions, "pyvips", vips)

        def read_bytes(uri, streamed=vips is not None):
            assert not (streamed and uri.endswith("a.png")), "a streamed unit read the whole source"
            return real_read(uri)

        monkeypatch.setattr(storage, "read_bytes", read_bytes)
        encoder = archive.UnitEncoder(str(tmp_path / name), model_cfg, coding, fingerprint)
        results = [encoder(unit), encoder(first)]
        assert not any(r.failures for r in results)
        outputs[name] = [(tmp_path / name / "units" / f).read_bytes() for f in sorted(p.name for p in (tmp_path / name / "units").glob("*.parquet"))]
    assert outputs["streamed"] == outputs["pillow"]
