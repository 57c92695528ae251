"""`oml archive` / `oml restore` keep what a collection holds: every metadata block (byte for byte,
EXIF orientation aside), the colour profile with its pixels, each source's provenance and declared
depth, a BagIt-style manifest of what was restored, and the archive's own decoder (models/)."""

from __future__ import annotations

import hashlib
import io
import json
import shutil

import numpy as np
import pytest
from PIL import Image

from oml import metadata

from ..metadata_samples import camera_jpeg, profiled_tiff, text_png
from ..codec.test_depth_and_colour import P3, png16, r257

pytest.importorskip("pipeline.archive")

SAMPLES = {"camera.jpg": camera_jpeg, "text.png": text_png, "scans/profiled.tif": profiled_tiff}
DEEP = (np.add.outer(np.arange(48), np.arange(64)) * 997 % 65536).astype(np.uint16)  # full range, 16 bits


@pytest.fixture(scope="module")
def archived(tmp_path_factory):
    """One small Ray run: every sample, a 16-bit PNG, a plain PNG and a PNG of three tile rows,
    archived with the shipped model (so the archive stores its weights) and restored: whole, and
    again in bands of one tile (each banded image is streamed into its PNG)."""
    from pipeline.cli import main

    from ..conftest import start_local_ray

    tmp = tmp_path_factory.mktemp("archive")
    inp = tmp / "in"
    (inp / "scans").mkdir(parents=True)
    for name, make in SAMPLES.items():
        (inp / name).write_bytes(make(64, 48))
    (inp / "deep.png").write_bytes(png16(DEEP))
    Image.fromarray(np.zeros((48, 64, 3), np.uint8) + 90).save(inp / "plain.png")
    (inp / "tall.png").write_bytes(text_png(64, 150))  # 3 tiles of 64: restored in bands below
    ray = start_local_ray()
    try:
        assert main(["archive", "--input", str(inp), "--output", str(tmp / "a"), "-q", "2", "--tile", "64", "--no-progress"]) == 0
        assert main(["restore", "--input", str(tmp / "a"), "--output", str(tmp / "back"), "--no-progress"]) == 0
        assert main(["restore", "--input", str(tmp / "a"), "--output", str(tmp / "banded"), "--band-tiles", "1", "--no-progress"]) == 0
    finally:
        ray.shutdown()
    return tmp


def _rows(root):
    from pipeline.archive import schema

    rows = {}
    for f in sorted((root / "units").glob("*.images.parquet")):
        rows.update({r["path"]: r for r in schema.read_parquet(f.read_bytes()).to_pylist()})
    return rows


def test_every_block_comes_back_byte_for_byte_with_the_profile_attached(archived):
    for name, make in SAMPLES.items():
        source = (archived / "in" / name).read_bytes()
        back = (archived / "back" / (name.rsplit(".", 1)[0] + ".png")).read_bytes()
        assert metadata.canonical(metadata.blocks_of(back)) == metadata.canonical(metadata.blocks_of(source)), name
        img = Image.open(io.BytesIO(back))
        assert img.info["icc_profile"] == P3, name
    camera = Image.open(archived / "back" / "camera.png")
    assert camera.size == (48, 64) and camera.getexif()[0x0112] == 1
    assert metadata.blocks_of((archived / "back" / "plain.png").read_bytes()) == []


def test_a_banded_restore_streams_the_same_blocks_into_its_png(archived):
    """An image restored in bands (its PNG written row band by row band) carries its metadata as
    the whole-image restore does, and the manifest lists the file as written."""
    source = (archived / "in" / "tall.png").read_bytes()
    for folder in ("back", "banded"):
        back = (archived / folder / "tall.png").read_bytes()
        assert metadata.canonical(metadata.blocks_of(back)) == metadata.canonical(metadata.blocks_of(source)), folder
        img = Image.open(io.BytesIO(back))
        assert img.info["icc_profile"] == P3 and img.info["Title"] == Image.open(io.BytesIO(source)).info["Title"], folder
    whole, banded = (np.asarray(Image.open(archived / f / "tall.png")) for f in ("back", "banded"))
    assert np.array_equal(whole, banded)
    listed = dict(reversed(line.split("  ", 1)) for line in (archived / "banded" / "manifest-sha256.txt").read_text().splitlines())
    assert listed["tall.png"] == hashlib.sha256((archived / "banded" / "tall.png").read_bytes()).hexdigest()


def test_the_images_table_records_provenance_depth_and_blocks(archived):
    rows = _rows(archived / "a")
    assert set(rows) == {*SAMPLES, "deep.png", "plain.png", "tall.png"}
    for path, row in rows.items():
        data = (archived / "in" / path).read_bytes()
        assert row["format_version"] == 3
        assert bytes(row["source_sha256"]) == hashlib.sha256(data).digest() and row["source_bytes"] == len(data)
        assert row["source_mtime"] == pytest.approx((archived / "in" / path).stat().st_mtime)
        assert [(b["kind"], b["data"]) for b in row["metadata"]] == list(metadata.extract(data).blocks)
    assert (rows["deep.png"]["source_format"], rows["deep.png"]["source_bits"], rows["deep.png"]["source_sample_format"]) == ("PNG", 16, "uint")
    assert (rows["scans/profiled.tif"]["source_format"], rows["scans/profiled.tif"]["source_bits"]) == ("TIFF", 8)
    assert rows["camera.jpg"]["source_format"] == "JPEG"
    deep = np.asarray(Image.open(archived / "back" / "deep.png"), dtype=np.float64)
    assert abs(deep.mean() - r257(DEEP).mean()) < 3  # coded at quality 2: near round(v / 257), not v >> 8 or v


def test_restore_writes_a_bagit_manifest_and_a_map_to_the_sources(archived):
    lines = (archived / "back" / "manifest-sha256.txt").read_text().splitlines()
    listed = dict(reversed(line.split("  ", 1)) for line in lines)
    assert set(listed) == {"camera.png", "text.png", "scans/profiled.png", "deep.png", "plain.png", "tall.png"}
    for name, digest in listed.items():
        assert hashlib.sha256((archived / "back" / name).read_bytes()).hexdigest() == digest
    mapped = json.loads((archived / "back" / "restored-sources.json").read_text())["files"]
    assert mapped["scans/profiled.png"]["path"] == "scans/profiled.tif"
    assert mapped["camera.png"]["source_sha256"] == hashlib.sha256((archived / "in" / "camera.jpg").read_bytes()).hexdigest()
    assert mapped["deep.png"]["source_bits"] == 16


def test_the_archive_restores_with_its_own_models_when_the_package_lacks_them(archived, tmp_path, monkeypatch):
    """The installed package's weights folder holds its manifest only (a later release's package):
    the archive's models/ copies decode it, checked by SHA-256; without them it cannot."""
    from oml.models import weights
    from pipeline.archive import decoder as archive_decoder, layout
    from pipeline.archive.config import ModelConfig, DecompressConfig
    from pipeline.archive.decompress import _decode_jobs, catalogue

    root = archived / "a"
    summary = json.loads((root / "summary.json").read_text())
    stored = sorted(p.name for p in (root / "models").iterdir())
    assert stored == sorted(f"{sha}.pt" for sha in summary["models"]) and stored
    for p in (root / "models").iterdir():
        assert hashlib.sha256(p.read_bytes()).hexdigest() + ".pt" == p.name

    bare = tmp_path / "package"
    bare.mkdir()
    shutil.copy(weights.package_folder() / "manifest.json", bare / "manifest.json")
    monkeypatch.setattr(weights, "package_folder", lambda: bare)
    monkeypatch.setenv("OML_WEIGHTS_NO_CHECKOUT", "1")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("OML_WEIGHTS_PATH", raising=False)
    monkeypatch.delenv("OML_WEIGHTS_DOWNLOAD", raising=False)
    archive_decoder._DECODERS.clear()
    archive_decoder._MODEL_FOLDERS.clear()

    plan = layout.read_plan(str(root)).plan
    jobs, _ = _decode_jobs(catalogue(str(root), plan), DecompressConfig(str(root), str(tmp_path / "out"), progress=False), str(tmp_path / "out"))
    job = next(j for j in jobs if j.image["path"] == "camera.jpg")
    model = ModelConfig(**plan["model"])
    result = archive_decoder.ImageDecoder(model, archive=str(root))(job)
    assert result.status == "ok", result.reason
    assert (tmp_path / "out" / "camera.png").read_bytes() == (archived / "back" / "camera.png").read_bytes()

    archive_decoder._DECODERS.clear()
    result = archive_decoder.ImageDecoder(model)(job._replace(output=str(tmp_path / "out2" / "camera.png")))  # no archive models
    assert result.status == "failed" and "is needed and not found" in result.reason
