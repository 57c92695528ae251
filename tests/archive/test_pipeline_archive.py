"""The archiving pipeline on a local Ray (2 CPUs): units of tiles, resume, killed workers, bad inputs,
decompression gathering an image's tiles across units, region decode."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
from pathlib import Path

import pytest
import torch

from oml import codec, metadata, tiling
from oml.imageio import decode_image, encode_png

from ..conftest import natural_image, start_local_ray

ray = pytest.importorskip("ray")
pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

archive = pytest.importorskip("pipeline.archive")
schema = pytest.importorskip("pipeline.archive.schema")
storage = pytest.importorskip("pipeline.storage")
planning = pytest.importorskip("pipeline.archive.plan")
CodingConfig, CompressConfig, DecompressConfig, ModelConfig = archive.CodingConfig, archive.CompressConfig, archive.DecompressConfig, archive.ModelConfig
SOURCE_CHANGED = "source changed since archiving (its SHA-256 differs from the one recorded)"

MODEL = ModelConfig(pretrained=False, seed=0)
CODING = CodingConfig(quality=2, steps=1, tile=128, max_pixels=70_000)
GOOD = {"a.png": (100, 150), "sub/b.png": (200, 300), "sub/deeper/c.jpg": (64, 64)}
BAD_REASONS = {
    "corrupt.png": "not a supported image format",
    "empty.png": "empty file",
    "truncated.png": "corrupt or truncated",
    "unsupported.webp": "not a supported image format",
    "big.png": "over the limit",
}
# Tiles (128²) in listing order: a.png 2, sub/b.png 6 (2x3), sub/deeper/c.jpg 1, truncated.png 1 (its
# header reads). Cut every 4: unit 0 = a.png 0-1 + b.png 0-1, unit 1 = b.png 2-5, unit 2 = c.jpg + truncated.png.
UNITS = [[("a.png", 0, 2), ("sub/b.png", 0, 2)], [("sub/b.png", 2, 4)], [("sub/deeper/c.jpg", 0, 1), ("truncated.png", 0, 1)]]


def make_inputs(root: Path) -> Path:
    """Three good images, five bad ones, and a text file that the extension filter skips."""
    for i, (name, (h, w)) in enumerate(GOOD.items()):
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if name.endswith(".jpg"):
            from PIL import Image

            Image.fromarray(natural_image(h, w, i).permute(1, 2, 0).numpy()).save(path, quality=90)
        else:
            path.write_bytes(encode_png(natural_image(h, w, i)))
    png = encode_png(natural_image(80, 80, 9))
    (root / "corrupt.png").write_bytes(os.urandom(300))
    (root / "empty.png").write_bytes(b"")
    (root / "truncated.png").write_bytes(png[: len(png) // 2])
    (root / "unsupported.webp").write_bytes(b"%PDF-1.4\n1 0 obj << >> endobj\n")
    (root / "big.png").write_bytes(encode_png(torch.zeros(3, 300, 300, dtype=torch.uint8)))
    (root / "notes.txt").write_text("not an image")
    return root


def config(inp: Path, out: Path, **changes) -> CompressConfig:
    base = CompressConfig(str(inp), str(out), model=MODEL, coding=CODING, unit_tiles=4, min_units=1, progress=False)
    return dataclasses.replace(base, **changes)


def unit_file(out: Path, index: int, kind: str) -> Path:
    return Path(archive.unit_uri(str(out), index, kind))


def rows(out: Path, kind: str = "images") -> list[dict]:
    return [r for f in sorted((out / "units").glob(f"*.{kind}.parquet")) for r in pq.read_table(f).to_pylist()]


RESTORE_FILES = ["manifest-sha256.txt", "restored-sources.json"]  # what a restore writes beside the images


def image_bytes(out: Path) -> dict[str, bytes]:
    """Each archived image's rebuilt ``oml`` bytes, its tiles gathered from every unit."""
    tiles = rows(out, "tiles")
    return {r["path"]: schema.coded_bytes(r, [t for t in tiles if t["path"] == r["path"]]) for r in rows(out)}


def snapshot(out: Path, pattern: str = "*") -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((out / "units").glob(pattern))}


def reseal(out: Path, index: int, kind: str, table: list[dict], table_schema=None) -> None:
    """Write ``table`` as unit ``index``'s ``kind`` file and re-seal its marker (as a forger would)."""
    seal = {}
    if kind == "tiles":
        data, groups, footer = schema.tiles_parquet(table, table_schema or schema.TILE_SCHEMA)
        seal = {"tiles_groups": groups, "tiles_footer": footer}
    else:
        data = schema.to_parquet(table, table_schema or schema.IMAGE_SCHEMA)
    unit_file(out, index, kind).write_bytes(data)
    marker = unit_file(out, index, "done")
    marker.write_text(json.dumps(json.loads(marker.read_text()) | {f"{kind}_bytes": len(data), f"{kind}_sha256": schema.sha256(data)} | seal))


def edited_copy(out: Path, copy: Path, index: int, kind: str, edit) -> Path:
    """A copy of the archive ``out`` whose unit ``index`` ``kind`` rows went through ``edit``."""
    shutil.copytree(out, copy)
    table = pq.read_table(unit_file(copy, index, kind)).to_pylist()
    for row in table:
        edit(row)
    reseal(copy, index, kind, table)
    return copy


@dataclasses.dataclass(frozen=True)
class DiesOnce(archive.UnitEncoder):
    """An encoder whose worker process dies (as under SIGKILL or the OOM killer) the first time it
    starts unit ``unit``, after a torn write of that unit's tiles file when ``torn``; ``flag`` is
    the file that records the death, so Ray's retry runs the unit normally."""

    flag: str = ""
    unit: int = 1
    torn: bool = False

    def __call__(self, unit):
        if unit.index == self.unit and not os.path.exists(self.flag):
            Path(self.flag).write_text(str(os.getpid()))
            if self.torn:
                storage.write_bytes(archive.unit_uri(self.output, unit.index, "tiles"), b"PAR1 torn")
            os._exit(9)
        return super().__call__(unit)


@pytest.fixture(scope="module")
def local_ray():
    yield start_local_ray()
    ray.shutdown()


@pytest.fixture(scope="module")
def model():
    return archive.get_model(MODEL, CODING.quality)


@pytest.fixture(scope="module")
def archived(local_ray, tmp_path_factory):
    """One archive of the mixed inputs, shared by the tests that only read it."""
    inp = make_inputs(tmp_path_factory.mktemp("inputs"))
    out = tmp_path_factory.mktemp("archive")
    report = archive.run_compress(config(inp, out))
    return inp, out, report


# --------------------------------------------------------------------------- without Ray


def test_units_are_deterministic_cuts_of_the_sorted_listing_by_tiles(tmp_path):
    inp = make_inputs(tmp_path)
    files = storage.list_files(str(inp), archive.IMAGE_SUFFIXES)
    assert [f.relative_path for f in files] == sorted(f.relative_path for f in files)
    assert "notes.txt" not in [f.relative_path for f in files] and len(files) == 8
    probed = planning.probe_all(files, CODING.max_pixels)
    failed = {p.path: p.reason for p in probed if isinstance(p, archive.Failure)}
    assert set(failed) == set(BAD_REASONS) - {"truncated.png"}  # its header reads; decoding it fails later
    images = [p for p in probed if isinstance(p, archive.PlannedImage)]
    assert [(p.path, p.height, p.width) for p in images[:3]] == [(n, *s) for n, s in GOOD.items()]
    units = archive.make_units(images, 128, 4)
    assert [[(p.image.path, p.first, p.count) for p in u.pieces] for u in units] == UNITS
    assert units == archive.make_units(images, 128, 4)
    # A few tiles still make min_units units; whole_images (rate control) cuts only between images.
    assert [u.tiles for u in archive.make_units(images, 128, 64, min_units=5)] == [2, 2, 2, 2, 2]
    assert [u.tiles for u in archive.make_units(images, 128, 4, whole_images=True)] == [8, 2]


def test_a_small_collection_is_not_cut_into_units_smaller_than_the_floor():
    """min_units splits a small collection for the workers, into a power of two of units (even
    shares for 2, 4, 8 … workers), never below min_unit_tiles tiles per unit (each unit's footers
    would outweigh its tiles); plans written before the floor existed re-plan to the units they
    had, so those archives still resume and restore."""
    images = [archive.PlannedImage(f"/in/{i:02d}.png", f"{i:02d}.png", 768, 512) for i in range(24)]  # Kodak: 2 tiles each
    defaults = CompressConfig("/in", "/out")
    units = archive.make_units(images, 512, defaults.unit_tiles, defaults.min_units, min_unit_tiles=defaults.min_unit_tiles)
    assert [u.tiles for u in units] == [24, 24]  # 3 units of 16 would leave one of 2 workers idle a third of the time
    assert [u.tiles for u in archive.make_units(images[:10], 512, 64, 32, min_unit_tiles=16)] == [20]
    assert [u.tiles for u in archive.make_units(images, 512, 8, 32, min_unit_tiles=16)] == [8] * 6  # --unit-tiles still caps
    big = [archive.PlannedImage("/in/big.png", "big.png", 8192, 8192)]  # 256 tiles: 16 units of 16
    assert [u.tiles for u in archive.make_units(big, 512, 64, 32, min_unit_tiles=16)] == [16] * 16
    many = [archive.PlannedImage(f"/in/{i}.png", f"{i}.png", 8192, 8192) for i in range(9)]  # 2304 tiles: 64 each, as before the floor
    assert archive.make_units(many, 512, 64, 32, min_unit_tiles=16) == archive.make_units(many, 512, 64, 32)
    plan = planning.settings(defaults, [storage.SourceFile(im.source, im.path, 1) for im in images], "f")
    assert plan["min_unit_tiles"] == 16 and len(planning.planned_units(plan, images)) == 2
    older = {k: v for k, v in plan.items() if k != "min_unit_tiles"}
    assert [u.tiles for u in planning.planned_units(older, images)] == [2] * 24
    planning.check(older, plan, "/out")  # the older plan's archive resumes under today's settings


def test_header_sizes_follow_exif_orientation(tmp_path):
    from PIL import Image

    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90°: a 40x20 file is shown 20x40
    Image.new("RGB", (40, 20)).save(tmp_path / "r.jpg", exif=exif)
    [planned] = planning.probe_all(storage.list_files(str(tmp_path), (".jpg",)), 10**6)
    assert (planned.width, planned.height) == tuple(decode_image((tmp_path / "r.jpg").read_bytes()).shape[:0:-1]) == (20, 40)


def test_tiles_coded_by_pieces_are_the_whole_image_codec_bytes(model):
    """Any cut of an image's tiles into pieces codes every tile exactly as one whole-image encode."""
    image = natural_image(200, 300, 1)
    expected = codec.encode(model, image, quality=2, adapt_config=CODING.adapt, tile_size=128)
    header, tile_rows = None, []
    for first, count in [(0, 2), (2, 3), (5, 1)]:
        for rect in tiling.tile_range_rects(200, 300, 128, first, count):
            pixels = image[:, rect.top : rect.top + rect.height, rect.left : rect.left + rect.width]
            header, coded = archive.encode_rect(model, pixels, CODING, rect, 200, 300)
            tile_rows += [schema.tile_row("p", c.tile, c.number, c.stats, c.record, c.reconstruction) for c in coded]
    row = schema.image_row("src", "p", 3, schema.sha256(b"raw"), header)
    assert schema.coded_bytes(row, tile_rows[::-1]) == expected.data and schema.damage(row, tile_rows) == ""
    # Through Parquet and back: float16 λ*, binary strings and float32 λ_t survive exactly.
    back = schema.read_parquet(schema.to_parquet([row], schema.IMAGE_SCHEMA)).to_pylist()[0]
    tiles_back = schema.read_parquet(schema.to_parquet(tile_rows, schema.TILE_SCHEMA)).to_pylist()
    assert schema.coded_bytes(back, tiles_back) == expected.data
    assert [t["psnr_after"] for t in sorted(tiles_back, key=lambda t: t["index"])] == [t.psnr_after for t in expected.tiles]


def test_refined_tiles_coded_by_pieces_are_the_whole_image_codec_bytes():
    """--refine on the job: a unit's piece of an image refines each tile as the whole-image encode
    does (each tile's search is seeded alike), and the bytes decode with the unchanged decoder."""
    model = archive.get_model(ModelConfig(), 2)  # the shipped model: a random one has nothing to refine
    image = natural_image(128, 320, 2)
    coding = dataclasses.replace(CODING, refine=10)
    expected = codec.encode(model, image, quality=2, adapt_config=coding.adapt, tile_size=128, refine_config=coding.search)
    assert any(t.refined for t in expected.tiles)
    tile_rows, header = [], None
    for first, count in [(0, 1), (1, 2)]:
        for rect in tiling.tile_range_rects(128, 320, 128, first, count):
            header, coded = archive.encode_rect(model, image[:, rect.top : rect.top + rect.height, rect.left : rect.left + rect.width], coding, rect, 128, 320)
            tile_rows += [schema.tile_row("p", c.tile, c.number, c.stats, c.record, c.reconstruction) for c in coded]
    data = schema.coded_bytes(schema.image_row("src", "p", 3, schema.sha256(b"raw"), header), tile_rows)
    assert data == expected.data
    assert torch.equal(codec.decode(model, data), expected.reconstruction)


def test_archive_files_carry_no_dictionaries_statistics_or_arrow_schema(model):
    """What nothing reads is not written (it was a quarter of a small unit's files), and the rows
    still read back as written, by the Parquet schema alone."""
    enc = codec.encode(model, natural_image(100, 150, 0), quality=2, tile_size=128)
    grid = [t.tile for t in enc.tiles]
    records = codec.read(enc.data)[1]
    tiles = [schema.tile_row("a.png", g, i, t, r, x) for i, (g, t, r, x) in enumerate(zip(grid, enc.tiles, records, tiling.split(enc.reconstruction, grid)))]
    data, groups, _ = schema.tiles_parquet(tiles)
    meta = pq.ParquetFile(pa.BufferReader(data)).metadata
    assert meta.metadata is None or b"ARROW:schema" not in meta.metadata
    for g in range(meta.num_row_groups):
        for c in range(meta.num_columns):
            col = meta.row_group(g).column(c)
            assert not col.has_dictionary_page and col.statistics is None
    assert schema.read_parquet(data).to_pylist() == tiles and len(groups) == 1


def test_png_names_keep_distinct_sources_apart():
    names = archive.png_names(["a.jpg", "a.png", "b/c.tif"])
    assert names == {"a.jpg": "a.jpg.png", "a.png": "a.png.png", "b/c.tif": "b/c.png"}


def test_the_marker_is_written_only_after_its_parquet_files(model, tmp_path, monkeypatch):
    """A unit whose Parquet write fails leaves no marker (so it is redone); a finished unit's
    marker names the very bytes on disk."""
    inp = tmp_path / "in"
    inp.mkdir()
    (inp / "a.png").write_bytes(encode_png(natural_image(64, 64)))
    [image] = planning.probe_all(storage.list_files(str(inp), (".png",)), 10**6)
    unit = archive.Unit(0, (archive.Piece(image, 0, 1),))
    out = tmp_path / "out"
    encoder = archive.UnitEncoder(str(out), MODEL, CODING, model.fingerprint(CODING.quality).hex())
    real = storage.write_bytes
    for kind in ("tiles", "images"):

        def failing(uri, data, kind=kind):
            if uri.endswith(f".{kind}.parquet"):
                raise OSError("disk full")
            real(uri, data)

        monkeypatch.setattr(storage, "write_bytes", failing)
        with pytest.raises(OSError, match="disk full"):
            encoder(unit)
        assert not unit_file(out, 0, "done").exists()
    monkeypatch.setattr(storage, "write_bytes", real)
    result = encoder(unit)
    assert archive.read_marker(str(out), 0).result == result and result.tiles == 1 and not result.failures


def test_config_errors_are_clear():
    with pytest.raises(ValueError, match="steps"):
        CodingConfig(steps=-1)
    with pytest.raises(ValueError, match="multiple of 64"):
        CodingConfig(tile=100)
    with pytest.raises(ValueError, match="tile size 70016 is over the format's limit"):
        CodingConfig(tile=70016)  # before: struct.error in every worker, and "run again"
    with pytest.raises(ValueError, match="unit_tiles"):
        CompressConfig("a", "b", unit_tiles=0)
    with pytest.raises(ValueError, match="--verify checks whole images"):
        DecompressConfig("a", "b", verify=True, region=tiling.Region(0, 0, 8, 8))


# --------------------------------------------------------------------------- compression on Ray


def test_bad_inputs_are_in_the_manifest_and_the_job_completes(archived):
    _, out, report = archived
    assert (report.images, report.archived, report.failed, report.exit_code, report.units) == (8, 3, 5, 1, 3)
    manifest = json.loads((out / "manifest.json").read_text())
    reasons = {f["path"]: f["reason"] for f in manifest["failed"]}
    assert set(reasons) == set(BAD_REASONS)
    for name, words in BAD_REASONS.items():
        assert words in reasons[name], (name, reasons[name])
    assert {f["path"]: f["unit"] for f in manifest["failed"]}["truncated.png"] == 2
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["images"], summary["archived"], summary["failed"], summary["tiles"]) == (8, 3, 5, 9)
    assert summary["units"] == {"total": 3, "tiles_per_unit": 4, "committed": 3, "skipped": 0, "written": 3, "failed": 0}
    assert summary["mean_bpp"] > 0 and summary["last_run"]["tiles_per_second"] > 0
    parquet = sum(f.stat().st_size for f in (out / "units").glob("*.parquet"))
    assert summary["stored_bytes"] == parquet > summary["coded_bytes"]


def test_rows_follow_the_schema_and_rebuild_the_codec_bytes(archived, model):
    inp, out, _ = archived
    assert pq.read_table(unit_file(out, 0, "tiles")).schema.remove_metadata() == schema.TILE_SCHEMA.remove_metadata()
    assert pq.read_table(unit_file(out, 0, "images")).schema.remove_metadata() == schema.IMAGE_SCHEMA.remove_metadata()
    assert [[r["path"] for r in pq.read_table(unit_file(out, i, "images")).to_pylist()] for i in range(3)] == [["a.png", "sub/b.png"], [], ["sub/deeper/c.jpg"]]
    coded = image_bytes(out)
    assert sorted(coded) == sorted(GOOD)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["coded_bytes"] == sum(len(b) for b in coded.values())
    for r in rows(out):
        data = (inp / r["path"]).read_bytes()
        image = decode_image(data)
        assert r["source_sha256"] == schema.digest(data) and r["source_bytes"] == len(data)
        assert (r["height"], r["width"], r["model"], r["quality"]) == (*image.shape[1:], "oml-default", 2)
        expected = codec.encode(model, image, quality=2, adapt_config=CODING.adapt, tile_size=128)
        source = metadata.source_of(data, r["path"], r["source_mtime"])  # format 3: the source section, then the same tiles
        assert coded[r["path"]] == codec.with_source(expected.data, source)


def test_second_run_skips_committed_units_and_adds_nothing(archived):
    inp, out, _ = archived
    before = snapshot(out)
    report = archive.run_compress(config(inp, out))
    assert (report.units_written, report.units_skipped, report.archived, report.failed) == (0, 3, 3, 5)
    assert snapshot(out) == before
    assert len(rows(out)) == 3 and len(rows(out, "tiles")) == 9


def test_unfinished_unit_is_redone_without_duplicates(archived, tmp_path):
    inp, out, _ = archived
    copy = tmp_path / "archive"
    shutil.copytree(out, copy)
    # A crash in the middle of sub/b.png: after a partial Parquet write and before the done marker.
    unit_file(copy, 1, "done").unlink()
    unit_file(copy, 1, "tiles").write_bytes(b"PAR1 half written")
    (copy / "units" / "unit-000001.images.parquet.0123abcd.tmp").write_bytes(b"PAR1 a killed writer's")
    report = archive.run_compress(config(inp, copy))
    assert not list((copy / "units").glob("*.tmp"))
    assert (report.units_written, report.units_skipped, report.exit_code) == (1, 2, 1)
    assert image_bytes(copy) == image_bytes(out)
    assert snapshot(copy, "*.parquet") == snapshot(out, "*.parquet")  # markers differ only in timings


@pytest.mark.parametrize(
    "damage,why",
    [
        (lambda d: unit_file(d, 1, "tiles").write_bytes(unit_file(d, 1, "tiles").read_bytes()[:100]), "unit 1: its tiles Parquet file is missing or not the size committed"),
        (lambda d: unit_file(d, 1, "tiles").unlink(), "unit 1: its tiles Parquet file is missing"),
        (lambda d: unit_file(d, 1, "images").unlink(), "unit 1: its images Parquet file is missing"),
        (lambda d: unit_file(d, 1, "done").write_text("{}"), "damaged marker"),
        (lambda d: unit_file(d, 1, "done").write_text('{"format": "oml-arch'), "damaged marker"),
        (lambda d: unit_file(d, 1, "done").unlink(), "unit 1 not committed"),
    ],
)
def test_damaged_units_are_named_by_decompress_and_repaired_by_compress(archived, tmp_path, damage, why):
    """A truncated, missing or unmarked unit: decompress restores the images it does not touch and
    names the one it does (sub/b.png, whose tiles 2-5 it holds; exit 1); the next compress run redoes
    exactly that unit, after which everything restores."""
    inp, out, _ = archived
    copy = tmp_path / "archive"
    shutil.copytree(out, copy)
    damage(copy)
    report = archive.run_decompress(DecompressConfig(str(copy), str(tmp_path / "png"), progress=False))
    assert (report.exit_code, report.restored, report.failed) == (1, 2, 1)
    [failed] = [r for r in report.results if r.status == "failed"]
    assert failed.path == "sub/b.png" and why in failed.reason and "re-run compress" in failed.reason, failed.reason
    again = archive.run_compress(config(inp, copy))
    assert (again.units_written, again.units_skipped) == (1, 2)
    assert snapshot(copy, "*.parquet") == snapshot(out, "*.parquet")
    report = archive.run_decompress(DecompressConfig(str(copy), str(tmp_path / "png2"), progress=False))
    assert (report.selected, report.restored, report.exit_code) == (3, 3, 0)


def test_a_flipped_bit_in_a_tiles_file_is_named_at_decode(archived, tmp_path):
    """Same size, another hash: found by the decoder that reads the file, not the driver."""
    _, out, _ = archived
    copy = tmp_path / "archive"
    shutil.copytree(out, copy)
    data = bytearray(unit_file(copy, 1, "tiles").read_bytes())
    data[-20] ^= 0x01
    unit_file(copy, 1, "tiles").write_bytes(bytes(data))
    report = archive.run_decompress(DecompressConfig(str(copy), str(tmp_path / "png"), progress=False))
    [failed] = [r for r in report.results if r.status == "failed"]
    assert failed.path == "sub/b.png" and "unit 1: its tiles Parquet file is" in failed.reason and "another hash" in failed.reason


def test_a_killed_worker_loses_nothing(archived, tmp_path):
    """The worker coding the middle of sub/b.png dies after a torn write: Ray's retry redoes that
    unit whole; every tile is in the archive once."""
    inp, out, _ = archived
    flag = tmp_path / "killed-once"

    target = tmp_path / "archive"
    fingerprint = archive.get_model(MODEL, CODING.quality).fingerprint(CODING.quality).hex()
    encoder = DiesOnce(str(target), MODEL, CODING, fingerprint, flag=str(flag), torn=True)
    report = archive.run_compress(config(inp, target), encoder=encoder)
    assert flag.exists() and int(flag.read_text()) != os.getpid()
    assert (report.archived, report.failed, report.units_written, report.units_failed) == (3, 5, 3, ())
    assert sorted((t["path"], t["index"]) for t in rows(target, "tiles")) == sorted((t["path"], t["index"]) for t in rows(out, "tiles"))
    assert snapshot(target, "*.parquet") == snapshot(out, "*.parquet")


def test_a_rerun_with_other_settings_or_inputs_is_refused(archived, tmp_path):
    inp, out, _ = archived
    with pytest.raises(ValueError, match="coding"):
        archive.run_compress(config(inp, out, coding=dataclasses.replace(CODING, quality=3)))
    with pytest.raises(ValueError, match="unit_tiles"):
        archive.run_compress(config(inp, out, unit_tiles=5))
    more = tmp_path / "inputs"
    shutil.copytree(inp, more)
    (more / "new.png").write_bytes(encode_png(natural_image(64, 64)))
    with pytest.raises(ValueError, match="listing now has 9 files"):
        archive.run_compress(config(more, out))


def test_an_archive_of_the_older_format_is_refused_in_one_line(tmp_path):
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "plan.json").write_text(json.dumps({"format": "oml-archive-plan/1", "shard_size": 16}))
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.png").write_bytes(encode_png(natural_image(64, 64)))
    for run in (lambda: archive.run_decompress(DecompressConfig(str(tmp_path / "old"), str(tmp_path / "png"))),
                lambda: archive.run_compress(config(tmp_path / "in", tmp_path / "old"))):  # fmt: skip
        with pytest.raises(ValueError, match="written by an older oml.*restore it with that version"):
            run()


def test_no_inputs_is_an_error(tmp_path):
    (tmp_path / "in").mkdir()
    with pytest.raises(ValueError, match="no input images"):
        archive.run_compress(config(tmp_path / "in", tmp_path / "out"))


# --------------------------------------------------------------------------- decompression


def test_decompress_all_with_verify(archived, model, tmp_path):
    inp, out, _ = archived
    report = archive.run_decompress(DecompressConfig(str(out), str(tmp_path / "png"), verify=True, sources=str(inp), progress=False))
    assert (report.selected, report.restored, report.mismatched, report.exit_code) == (3, 3, 0, 0)
    assert all(r.checks["bit_exact"] and r.checks["max_psnr_error"] == 0.0 for r in report.results)
    for name in GOOD:
        png = tmp_path / "png" / (os.path.splitext(name)[0] + ".png")
        expected = codec.encode(model, decode_image((inp / name).read_bytes()), quality=2, adapt_config=CODING.adapt, tile_size=128)
        assert torch.equal(decode_image(png.read_bytes()), expected.reconstruction)
    assert json.loads((tmp_path / "png" / "decompress-summary.json").read_text())["restored"] == 3


def test_an_archive_written_with_hex_digests_still_restores_and_verifies(archived, tmp_path):
    """Schema 3 stored each SHA-256 as 64 hex characters (schema 4: 32 bytes). Such an archive
    restores bit-exactly under --verify, its sources check, and a wrong hex digest is still named."""
    inp, out, _ = archived
    copy = tmp_path / "archive"
    shutil.copytree(out, copy)

    def as_hex(table_schema):
        return pa.schema([(f.name, pa.string()) if f.name.endswith("_sha256") else f for f in table_schema])

    for index in range(3):
        for kind, old in (("tiles", as_hex(schema.TILE_SCHEMA)), ("images", as_hex(schema.IMAGE_SCHEMA))):
            table = pq.read_table(unit_file(copy, index, kind)).to_pylist()
            for row in table:
                row.update({k: v.hex() for k, v in row.items() if k.endswith("_sha256")})
            reseal(copy, index, kind, table, old)
    assert pq.read_table(unit_file(copy, 0, "tiles")).schema.field("record_sha256").type == pa.string()
    report = archive.run_decompress(DecompressConfig(str(copy), str(tmp_path / "png"), verify=True, sources=str(inp), progress=False))
    assert (report.restored, report.mismatched, report.exit_code) == (3, 0, 0)
    assert all(r.checks["bit_exact"] and r.checks["max_psnr_error"] == 0.0 for r in report.results)

    def wrong(row: dict) -> None:
        if row["path"] == "a.png" and row["index"] == 1:
            row["record_sha256"] = "0" * 64

    table = pq.read_table(unit_file(copy, 0, "tiles")).to_pylist()
    for row in table:
        wrong(row)
    reseal(copy, 0, "tiles", table, as_hex(schema.TILE_SCHEMA))
    report = archive.run_decompress(DecompressConfig(str(copy), str(tmp_path / "png2"), select=("a.png",), progress=False))
    assert report.exit_code == 1 and "tile 1 checksum differs" in report.results[0].reason


def test_decompress_a_selection(archived, tmp_path):
    inp, out, _ = archived
    by_glob = archive.run_decompress(DecompressConfig(str(out), str(tmp_path / "g"), select=("sub/*",), progress=False))
    assert sorted(r.path for r in by_glob.results) == ["sub/b.png", "sub/deeper/c.jpg"]
    by_uri = archive.run_decompress(DecompressConfig(str(out), str(tmp_path / "u"), select=(str(inp / "a.png"),), progress=False))
    assert [r.path for r in by_uri.results] == ["a.png"]
    assert sorted(p.name for p in (tmp_path / "u").iterdir()) == ["a.png", "decompress-summary.json", *RESTORE_FILES]
    with pytest.raises(ValueError, match="matches the selection"):
        archive.run_decompress(DecompressConfig(str(out), str(tmp_path / "n"), select=("nothing*",), progress=False))


def test_region_decode_equals_the_window_of_a_full_decode(archived, tmp_path):
    """A window of sub/b.png across tiles held by two units: only the tiles it overlaps are decoded,
    and the pixels are those of the full restore; a window outside the image is one clear error."""
    _, out, _ = archived
    full = archive.run_decompress(DecompressConfig(str(out), str(tmp_path / "full"), select=("sub/b.png",), progress=False))
    assert full.exit_code == 0
    whole = decode_image((tmp_path / "full" / "sub" / "b.png").read_bytes())
    for region in [tiling.Region(100, 90, 130, 70), tiling.Region(0, 0, 300, 200), tiling.Region(299, 199, 1, 1)]:
        # each window replaces the last one's file: --overwrite (a different existing file is otherwise left as it is)
        report = archive.run_decompress(DecompressConfig(str(out), str(tmp_path / "win"), select=("sub/b.png",), region=region, progress=False, overwrite=True))
        assert report.exit_code == 0
        window = decode_image((tmp_path / "win" / "sub" / "b.png").read_bytes())
        assert torch.equal(window, whole[:, region.top : region.top + region.height, region.left : region.left + region.width])
    with pytest.raises(ValueError, match=r"region 250,150,51,10 \(left,top,width,height\) is not inside the 300x200 image"):
        archive.run_decompress(DecompressConfig(str(out), str(tmp_path / "x"), select=("sub/b.png",), region=tiling.Region(250, 150, 51, 10), progress=False))
    with pytest.raises(ValueError, match="window of one image; the selection matches 2"):
        archive.run_decompress(DecompressConfig(str(out), str(tmp_path / "x"), select=("sub/*",), region=tiling.Region(0, 0, 8, 8), progress=False))


def test_a_window_reads_only_the_row_groups_of_its_tiles_each_checked(local_ray, tmp_path):
    """One unit of 32 tiles (128², a 512x1024 image) is 4 row groups of 8. A 100² window inside
    tiles 9, 10, 17 and 18 (groups 1 and 2) reads the footer and those two groups, and decodes
    what the full restore holds there. Damage outside them goes unnoticed by the window (it is
    never read) while the full restore names it; damage inside a group read, or in the footer,
    is refused naming the bytes. A marker from before row groups were recorded reads the whole file."""
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "wide.png").write_bytes(encode_png(natural_image(512, 1024, 3)))
    out = tmp_path / "archive"
    report = archive.run_compress(config(tmp_path / "in", out, unit_tiles=32, coding=dataclasses.replace(CODING, max_pixels=2**20)))
    assert (report.archived, report.units) == (1, 1)
    marker = json.loads(unit_file(out, 0, "done").read_text())
    groups, footer = [schema.Span(*g) for g in marker["tiles_groups"]], schema.Span(*marker["tiles_footer"])
    assert [g.rows for g in groups] == [8, 8, 8, 8]
    whole = archive.run_decompress(DecompressConfig(str(out), str(tmp_path / "whole"), progress=False))
    assert whole.exit_code == 0 and whole.results[0].bytes_read == unit_file(out, 0, "tiles").stat().st_size
    full = decode_image((tmp_path / "whole" / "wide.png").read_bytes())
    region = tiling.Region(200, 200, 100, 100)

    def window(root: Path, name: str) -> archive.DecodedImage:
        report = archive.run_decompress(DecompressConfig(str(root), str(tmp_path / name), region=region, progress=False))
        return report.results[0]

    r = window(out, "win")
    assert r.status == "ok" and r.bytes_read == footer.length + groups[1].length + groups[2].length
    assert torch.equal(decode_image(Path(r.output).read_bytes()), full[:, 200:300, 200:300])

    def damaged(name: str, offset: int) -> Path:
        copy = tmp_path / name
        shutil.copytree(out, copy)
        data = bytearray(unit_file(copy, 0, "tiles").read_bytes())
        data[offset] ^= 0x40
        unit_file(copy, 0, "tiles").write_bytes(bytes(data))
        return copy

    elsewhere = damaged("elsewhere", groups[3].offset + 10)
    assert window(elsewhere, "w1").status == "ok"
    assert archive.run_decompress(DecompressConfig(str(elsewhere), str(tmp_path / "w1-full"), progress=False)).exit_code == 1
    for name, offset in (("inside", groups[2].offset + groups[2].length // 2), ("footer", footer.offset + 5)):
        r = window(damaged(name, offset), f"w-{name}")
        assert r.status == "failed" and "of its tiles Parquet file differ from those committed" in r.reason, r.reason
        assert not Path(r.output).exists()
    older = tmp_path / "older"
    shutil.copytree(out, older)
    unit_file(older, 0, "done").write_text(json.dumps({k: v for k, v in marker.items() if k not in ("tiles_groups", "tiles_footer")}))
    r = window(older, "w-older")
    assert r.status == "ok" and r.bytes_read == unit_file(out, 0, "tiles").stat().st_size
    assert torch.equal(decode_image(Path(r.output).read_bytes()), full[:, 200:300, 200:300])
    forged = tmp_path / "forged"
    shutil.copytree(out, forged)
    spans = [list(g) for g in marker["tiles_groups"]]
    spans[1][0] = -100  # a span before the file's start (fsspec would read from its end)
    unit_file(forged, 0, "done").write_text(json.dumps(marker | {"tiles_groups": spans}))
    r = window(forged, "w-forged")
    assert r.status == "failed" and "damaged marker" in r.reason and "outside its tiles file" in r.reason, r.reason


def test_verify_reports_damaged_records_and_changed_sources(archived, tmp_path):
    inp, out, _ = archived

    def flip_lambda(row: dict) -> None:
        if row["path"] == "a.png" and row["index"] == 0:
            row["lambdas"][0] = 0.5  # a flipped λ* value: still decodable, no longer the coded file

    copy = edited_copy(out, tmp_path / "archive", 0, "tiles", flip_lambda)
    for verify in (True, False):  # checked on every decode, not only under --verify
        report = archive.run_decompress(DecompressConfig(str(copy), str(tmp_path / f"png{verify}"), select=("a.png",), verify=verify, progress=False))
        assert (report.failed, report.exit_code) == (1, 1)
        assert "tile 0 checksum differs" in report.results[0].reason and not (tmp_path / f"png{verify}" / "a.png").exists()

    # A source edited after compression, its pixels the same (a byte appended): the bit-exact
    # reconstruction check passes and so does PSNR, but the source is not the file archived, and
    # --verify --sources says so (exit 1, named in the summary).
    moved = tmp_path / "inputs"
    shutil.copytree(inp, moved)
    (inp / "sub" / "b.png").write_bytes((inp / "sub" / "b.png").read_bytes() + b"\0")
    try:
        report = archive.run_decompress(DecompressConfig(str(out), str(tmp_path / "png2"), select=("sub/b.png",), verify=True, sources=str(inp), progress=False))
    finally:
        shutil.copy(moved / "sub" / "b.png", inp / "sub" / "b.png")
    assert (report.mismatched, report.exit_code) == (1, 1)
    assert report.results[0].checks == {"checks_source": SOURCE_CHANGED, "bit_exact": True, "max_psnr_error": 0.0}
    [problem] = json.loads((tmp_path / "png2" / "decompress-summary.json").read_text())["problems"]
    assert problem["path"] == "sub/b.png" and problem["status"] == "mismatch" and problem["reason"] == SOURCE_CHANGED


def test_a_desynchronised_tile_is_in_the_summary_not_in_the_output(archived, tmp_path):
    """A row whose decoded symbols do not match its symbol check (here the check itself is
    altered; a desynchronised decoder looks the same): one failure naming the tile, recorded in
    decompress-summary.json, no PNG, exit status 1, the other images restored."""
    _, out, _ = archived

    def alter_check(row: dict) -> None:
        if row["path"] == "a.png" and row["index"] == 1:
            row["check"] ^= 1
            row["record_sha256"] = schema.digest(codec.pack_tile(schema.record_of(row, schema.header_of(rows(out)[0]))))  # a consistent record

    copy = edited_copy(out, tmp_path / "archive", 0, "tiles", alter_check)
    report = archive.run_decompress(DecompressConfig(str(copy), str(tmp_path / "png"), progress=False))
    assert (report.selected, report.restored, report.failed, report.exit_code) == (3, 2, 1, 1)
    summary = json.loads((tmp_path / "png" / "decompress-summary.json").read_text())
    [problem] = summary["problems"]
    assert problem["path"] == "a.png" and problem["status"] == "failed" and "desync in tile 1" in problem["reason"]
    assert not (tmp_path / "png" / "a.png").exists()


def test_rows_cannot_place_files_or_make_the_decoder_fetch(archived, tmp_path):
    """Forged image rows: paths that climb out or are absolute are refused and listed; a source URI
    pointing at a local server or a secret file is never opened, even under --verify; nothing is
    written outside the output folder; the other images are restored."""
    import http.server
    import threading

    _, out, _ = archived
    hits: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - the stdlib's name
            hits.append(self.path)
            self.send_response(404)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    secret = tmp_path / "secret.txt"
    secret.write_text("do not read")
    paths = {"a.png": "../../escaped.png", "sub/b.png": str(tmp_path / "absolute.png")}

    def forge(row: dict) -> None:
        if row["path"] == "sub/deeper/c.jpg":  # decodable: --verify must not follow its source
            row["source"] = f"http://127.0.0.1:{server.server_port}/fetch-me"
            return
        row["source"] = str(secret)
        row["path"] = paths[row["path"]]

    try:
        copy = tmp_path / "archive"
        shutil.copytree(out, copy)
        for index in (0, 2):
            table = pq.read_table(unit_file(copy, index, "images")).to_pylist()
            for row in table:
                forge(row)
            reseal(copy, index, "images", table)
        before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
        report = archive.run_decompress(DecompressConfig(str(copy), str(tmp_path / "png"), verify=True, progress=False))
    finally:
        server.shutdown()
    assert hits == []
    assert (report.selected, report.restored, report.failed, report.exit_code) == (3, 1, 2, 1)
    refused = {r.path: r.reason for r in report.results if r.status == "failed"}
    assert set(refused) == set(paths.values()) and all("unsafe path" in why for why in refused.values())
    after = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    assert [p for p in after if p not in before and p.parts[0] != "png"] == []
    assert not (tmp_path.parent / "escaped.png").exists() and not (tmp_path / "absolute.png").exists()
    [restored] = [r for r in report.results if r.status == "ok"]
    assert restored.path == "sub/deeper/c.jpg" and restored.checks == {"bit_exact": True, "checks_source": "no --sources given"}


def test_output_names_never_collide():
    names = archive.png_names(["a.png", "a.jpg", "a.png.png", "b/c.tif", "b/c.tiff", "b/c.tif.png"])
    assert len(set(names.values())) == 6
    assert names == archive.png_names(list(reversed(names)))  # the same on every run
    assert names["a.jpg"] == "a.jpg.png"


def test_restoring_into_the_input_folder_is_refused(archived):
    inp, out, _ = archived
    with pytest.raises(ValueError, match="input folder"):
        archive.run_decompress(DecompressConfig(str(out), str(inp), progress=False))


def test_decompress_refuses_what_is_not_an_archive(tmp_path):
    with pytest.raises(ValueError, match="not an oml archive"):
        archive.run_decompress(DecompressConfig(str(tmp_path), str(tmp_path / "png")))


def test_a_damaged_plan_loses_no_image_without_a_word(archived, tmp_path):
    """Without plan.copy.json (archives started before it) plan.json is checked by nothing: a plan
    whose unit numbers were altered is one clear error when they are not positive whole numbers,
    and otherwise re-plans units that the markers do not account for, so every image of those
    units is named (exit 1), none silently left out."""
    _, out, _ = archived
    for key, value in [("min_unit_tiles", 0), ("min_unit_tiles", "x"), ("unit_tiles", -1), ("min_units", 0)]:
        copy = tmp_path / f"{key}-{value}"
        shutil.copytree(out, copy)
        (copy / "plan.copy.json").unlink()
        plan = json.loads((copy / "plan.json").read_text())
        (copy / "plan.json").write_text(json.dumps(plan | {key: value}))
        with pytest.raises(ValueError, match=f"plan.json is damaged: {key} "):
            archive.run_decompress(DecompressConfig(str(copy), str(tmp_path / "png"), progress=False))
    copy = tmp_path / "one-unit"
    shutil.copytree(out, copy)
    (copy / "plan.copy.json").unlink()
    plan = json.loads((copy / "plan.json").read_text())
    (copy / "plan.json").write_text(json.dumps(plan | {"unit_tiles": 100}))  # one unit where three were coded
    report = archive.run_decompress(DecompressConfig(str(copy), str(tmp_path / "png1"), progress=False))
    assert report.exit_code == 1 and sorted(r.path for r in report.results) == sorted([*GOOD, "truncated.png"])  # every image the plan names
    assert all(r.status == "failed" and "does not account for" in r.reason for r in report.results)


# --------------------------------------------------------------------------- one huge image


def test_a_huge_image_spreads_over_units_survives_a_killed_worker_and_restores_bit_identically(local_ray, tmp_path, random_default_model):
    """2048x1536 at tile 256: 48 tiles in 6 units of 8 on both workers; the worker of unit 2 dies
    in the middle of the image and Ray's retry redoes that unit. The tiles gathered from every unit
    rebuild the bytes of a whole-image encode, and the archive restores exactly what
    ``oml decompress`` restores from those bytes."""
    from oml.models.zoo import save_weights
    from pipeline.cli import main as oml

    weights = tmp_path / "w.pt"
    save_weights(random_default_model, weights)
    model_cfg = ModelConfig(weights=str(weights))
    coding = CodingConfig(quality=2, tile=256)
    image = natural_image(1536, 2048, 5)
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "huge.png").write_bytes(encode_png(image))
    flag, out = tmp_path / "killed-once", tmp_path / "archive"
    model = archive.get_model(model_cfg, 2)

    encoder = DiesOnce(str(out), model_cfg, coding, model.fingerprint(2).hex(), flag=str(flag), unit=2)
    cfg = CompressConfig(str(tmp_path / "in"), str(out), model=model_cfg, coding=coding, unit_tiles=8, min_units=1, progress=False)
    report = archive.run_compress(cfg, encoder=encoder)
    assert flag.exists() and (report.archived, report.units, report.units_written, report.units_failed) == (1, 6, 6, ())
    assert sorted(t["index"] for t in rows(out, "tiles")) == list(range(48))
    data = image_bytes(out)["huge.png"]
    assert codec.with_source(data, None) == codec.encode(model, image, quality=2, tile_size=256).data
    (tmp_path / "huge.oml").write_bytes(data)
    assert oml(["decompress", str(tmp_path / "huge.oml"), "-o", str(tmp_path / "cli.png"), "--weights", str(weights)]) == 0
    restored = archive.run_decompress(DecompressConfig(str(out), str(tmp_path / "png"), progress=False))
    assert restored.exit_code == 0
    assert (tmp_path / "png" / "huge.png").read_bytes() == (tmp_path / "cli.png").read_bytes()
    # In bands (8 tiles: one tile row each, 6 tasks), streamed into one PNG: the same pixels, verified per band.
    banded = archive.run_decompress(DecompressConfig(str(out), str(tmp_path / "bands"), band_tiles=8, verify=True, progress=False))
    assert banded.exit_code == 0 and banded.results[0].checks == {"bands": 6, "bit_exact": True, "checks_source": "no --sources given"}
    assert (banded.selected, banded.restored) == (1, 1)  # images, not bands
    assert torch.equal(decode_image((tmp_path / "bands" / "huge.png").read_bytes()), decode_image((tmp_path / "cli.png").read_bytes()))
    # With --sources, each band compares its tiles' PSNR with its own rows of the source (the
    # source's hash checked once, by the driver); a changed source is a mismatch, named, and its
    # PSNR is compared too (here another image: far from the recorded PSNR).
    checked = archive.run_decompress(DecompressConfig(str(out), str(tmp_path / "b2"), band_tiles=8, verify=True, sources=str(tmp_path / "in"), progress=False))
    assert checked.exit_code == 0 and set(checked.results[0].checks) == {"bands", "bit_exact", "max_psnr_error"}
    assert checked.results[0].checks["max_psnr_error"] <= 0.01
    (tmp_path / "changed").mkdir()
    (tmp_path / "changed" / "huge.png").write_bytes(encode_png(natural_image(1536, 2048, 6)))
    changed = archive.run_decompress(DecompressConfig(str(out), str(tmp_path / "b3"), band_tiles=8, verify=True, sources=str(tmp_path / "changed"), progress=False))
    assert (changed.mismatched, changed.exit_code) == (1, 1) and changed.results[0].checks["checks_source"] == SOURCE_CHANGED
    assert changed.results[0].reason.startswith(SOURCE_CHANGED + "; PSNR differs from compression time by up to")
    assert changed.results[0].checks["max_psnr_error"] > 1.0

    # A band whose task fails: the image is reported failed, naming the band, and no file (or temporary) is left.
    @dataclasses.dataclass(frozen=True)
    class FailsBand3(archive.ImageDecoder):
        def __call__(self, job):
            if job.band == 3:
                raise RuntimeError("decoder crashed")
            return super().__call__(job)

    failed = archive.run_decompress(DecompressConfig(str(out), str(tmp_path / "fail8"), band_tiles=8, progress=False), decoder=FailsBand3(model_cfg))
    assert failed.exit_code == 1 and [r.status for r in failed.results] == ["failed"]
    assert "band 3" in failed.results[0].reason and "decoder crashed" in failed.results[0].reason
    assert sorted(p.name for p in (tmp_path / "fail8").iterdir()) == ["decompress-summary.json", *RESTORE_FILES]  # the manifest lists no file


def test_rate_control_in_the_ray_job_meets_reachable_targets_and_lists_the_rest(local_ray, tmp_path):
    """--target-psnr on the job: each image's row holds the file that met the target, at its own λ;
    an image that cannot reach it (noise) is a manifest entry naming the reachable range. A unit
    holds whole images here (the λ search needs all of an image's tiles)."""
    inp = tmp_path / "in"
    inp.mkdir()
    (inp / "smooth.png").write_bytes(encode_png(natural_image(128, 192, 0)))
    (inp / "noise.png").write_bytes(encode_png(torch.randint(0, 256, (3, 96, 96), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))))
    from oml.ratecontrol import image_psnr

    shipped = ModelConfig()
    model = archive.get_model(shipped, 3)
    smooth = natural_image(128, 192, 0)
    ends = [image_psnr(codec.encode(model, smooth, lmbda=lm, tile_size=128).reconstruction, smooth) for lm in model.lambda_range]
    target = round((ends[0] + ends[1]) / 2, 2)  # reachable for this image; far above what noise reaches
    coding = CodingConfig(steps=0, tile=128, target=("psnr", target))
    report = archive.run_compress(config(inp, tmp_path / "out", model=shipped, coding=coding))
    assert (report.archived, report.failed, report.exit_code) == (1, 1, 1)
    [row] = rows(tmp_path / "out")
    restored = codec.decode(model, image_bytes(tmp_path / "out")["smooth.png"])
    assert abs(image_psnr(restored, smooth) - target) <= 0.1 and model.lambda_range[0] < row["lmbda"] < model.lambda_range[1]
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    [entry] = manifest["failed"]
    assert entry["path"] == "noise.png" and "outside what oml-default reaches on this image" in entry["reason"]
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["target"] == ["psnr", target]


# --------------------------------------------------------------------------- nothing lost


def test_a_restore_never_writes_over_the_originals_however_the_output_is_spelled(local_ray, tmp_path, bind_mount):
    """The archive of x/in (which holds a.png and in/a.png): a restore into x/in through a symbolic
    link or a bind mount, into x (where row in/a.png would land on the original x/in/a.png), or
    into the archive itself is refused before anything is written; the originals are untouched."""
    x = tmp_path / "x"
    sources = x / "in"
    (sources / "in").mkdir(parents=True)
    (sources / "a.png").write_bytes(encode_png(natural_image(64, 64, 0)))
    (sources / "in" / "a.png").write_bytes(encode_png(natural_image(64, 64, 1)))
    originals = {p: p.read_bytes() for p in sources.rglob("*.png")}
    out = tmp_path / "archive"
    assert archive.run_compress(config(sources, out)).exit_code == 0
    link = tmp_path / "link"
    link.symlink_to(sources)
    archive_link = tmp_path / "archive-link"
    archive_link.symlink_to(out)
    for target, why in [
        (link, "is the archive's input folder"),
        (bind_mount(sources), "is the archive's input folder"),
        (x, "restored images would be written inside the archive's input folder .*x/in \\(1, first .*x/in/a.png\\)"),
        (archive_link, "is the archive itself"),
    ]:
        with pytest.raises(ValueError, match=why):
            archive.run_decompress(DecompressConfig(str(out), str(target), progress=False))
        assert {p: p.read_bytes() for p in sources.rglob("*.png")} == originals
        assert sorted(x.rglob("*")) == sorted([sources, sources / "in", *originals]) and not (out / "decompress-summary.json").exists()


def test_a_restore_leaves_a_different_existing_file_and_repeats_without_change(local_ray, tmp_path):
    """An output folder that holds other files at restored images' names (one whole, one banded):
    they are left as they are and named (exit 1), the rest restored. A repeated restore finds the
    same bytes and changes nothing (exit 0); --overwrite replaces the others."""
    inp = tmp_path / "in"
    inp.mkdir()
    (inp / "a.png").write_bytes(encode_png(natural_image(64, 96, 0)))
    (inp / "big.png").write_bytes(encode_png(natural_image(200, 300, 1)))  # 2 x 3 tiles: 2 bands of 3 at band_tiles=3
    (inp / "c.png").write_bytes(encode_png(natural_image(64, 64, 2)))
    out = tmp_path / "archive"
    assert archive.run_compress(config(inp, out)).exit_code == 0
    target = tmp_path / "photos"
    target.mkdir()
    mine = {"a.png": b"my own a.png", "big.png": encode_png(natural_image(200, 300, 7))}
    for name, data in mine.items():
        (target / name).write_bytes(data)
    restore = lambda folder, **kw: archive.run_decompress(DecompressConfig(str(out), str(folder), band_tiles=3, progress=False, **kw))  # noqa: E731
    report = restore(target)
    assert (report.restored, report.failed, report.exit_code) == (1, 2, 1)
    assert {r.path: r.status for r in report.results} == {"a.png": "failed", "big.png": "failed", "c.png": "ok"}
    assert all("a different file is already there; left as it is" in r.reason for r in report.results if r.status == "failed")
    assert {n: (target / n).read_bytes() for n in mine} == mine
    assert sorted(p.name for p in target.iterdir()) == ["a.png", "big.png", "c.png", "decompress-summary.json", *RESTORE_FILES]

    fresh = tmp_path / "restored"
    assert restore(fresh).exit_code == 0
    first = {p.name: (p.read_bytes(), p.stat().st_ino) for p in fresh.glob("*.png")}
    again = restore(fresh)
    assert (again.restored, again.exit_code) == (3, 0)
    assert {p.name: (p.read_bytes(), p.stat().st_ino) for p in fresh.glob("*.png")} == first  # not even rewritten

    assert restore(target, overwrite=True).exit_code == 0
    assert {p.name: p.read_bytes() for p in target.glob("*.png")} == {n: b for n, (b, _) in first.items()}


def test_the_longest_file_names_archive_and_restore(local_ray, tmp_path):
    """A source named with 255 bytes (the file system's limit), restored under a name as long:
    the temporaries beside it have short names of their own (NAME.<32 hex>.tmp was 37 bytes over)."""
    name = "p" * 251 + ".png"
    inp = tmp_path / "in"
    inp.mkdir()
    (inp / name).write_bytes(encode_png(natural_image(64, 64, 0)))
    out = tmp_path / "archive"
    assert archive.run_compress(config(inp, out)).exit_code == 0
    report = archive.run_decompress(DecompressConfig(str(out), str(tmp_path / "png"), progress=False))
    assert (report.restored, report.exit_code) == (1, 0)
    assert decode_image((tmp_path / "png" / name).read_bytes()).shape == (3, 64, 64)


def _job_argv(inp: Path, out: Path) -> list[str]:
    return ["archive", "--input", str(inp), "--output", str(out), "--random-weights", "--tile", "128", "-q", "2", "--no-progress", "--max-retries", "0"]


def test_an_archive_onto_a_disk_that_fills_up_says_so_leaves_nothing_and_completes_later(local_ray, tmp_path, small_disk, capsys):
    """A real tmpfs with room for the plan only: the units cannot be written, nor the manifest;
    the run says so in one line (not "storage unreachable or refused"), and leaves no temporary
    (the manifest's outlived the re-run before); with room again the same command completes it."""
    from pipeline.cli import main

    from ..conftest import fill_disk, temporaries

    inp = tmp_path / "in"
    inp.mkdir()
    for i, name in enumerate(["a.png", "b.png"]):
        (inp / name).write_bytes(encode_png(natural_image(64, 96, i)))
    assert main(_job_argv(inp, tmp_path / "reference")) == 0
    planned = [p for p in (tmp_path / "reference").iterdir() if p.name.startswith("plan")]
    disk = small_disk(1024)
    out = disk / "archive"
    ballast = fill_disk(disk, sum(-(-p.stat().st_size // 4096) * 4096 for p in planned))
    capsys.readouterr()
    assert main(_job_argv(inp, out)) == 1
    err = capsys.readouterr().err
    assert temporaries(disk) == []
    [line] = err.strip().splitlines()  # a unit's file or the manifest, whichever the run stops at
    assert re.fullmatch(rf"oml archive: error: no space left on device: {re.escape(str(out))}/\S+", line), line
    ballast.unlink()
    assert main(_job_argv(inp, out)) == 0
    assert "archived 2 of 2 images" in capsys.readouterr().out and temporaries(disk) == []


def test_a_restore_onto_a_disk_that_fills_up_says_so_leaves_nothing_and_completes_later(archived, tmp_path, small_disk, capsys):
    """A real tmpfs with room for the first restored image only (one task at a time): it is
    written whole, the others and the summary are not; the run says so in one line and leaves no
    temporary; with room again the same command restores the rest and leaves the first as it was."""
    from pipeline.cli import main

    from ..conftest import fill_disk, temporaries

    _, out, _ = archived
    argv = ["restore", "--input", str(out), "--no-progress", "--workers", "1", "--output"]
    assert main([*argv, str(tmp_path / "reference")]) == 0
    first = (tmp_path / "reference" / "a.png").read_bytes()
    disk = small_disk(1024)
    target = disk / "restored"
    ballast = fill_disk(disk, -(-len(first) // 4096) * 4096)
    capsys.readouterr()
    assert main([*argv, str(target)]) == 1
    err = capsys.readouterr().err
    assert temporaries(disk) == [] and [p.name for p in target.rglob("*") if p.is_file()] == ["a.png"]
    [line] = err.strip().splitlines()  # an image's file or the summary, whichever the run stops at
    assert re.fullmatch(rf"oml restore: error: no space left on device: {re.escape(str(target))}/\S+", line), line
    assert (target / "a.png").read_bytes() == first
    inode = (target / "a.png").stat().st_ino
    ballast.unlink()
    assert main([*argv, str(target)]) == 0
    assert temporaries(disk) == [] and (target / "a.png").stat().st_ino == inode
    assert sorted(p.relative_to(target).as_posix() for p in target.rglob("*.png")) == sorted(p.relative_to(tmp_path / "reference").as_posix() for p in (tmp_path / "reference").rglob("*.png"))


# --------------------------------------------------------------------------- sources identified by their bytes, the plan kept twice


def _same_size_edit(path: Path, image: torch.Tensor, **save) -> None:
    """Write ``image`` to ``path`` uncompressed (a stored-deflate PNG, a raw TIFF), so that an edited
    image of the same size makes a file of the very same byte size."""
    from PIL import Image

    before = path.stat().st_size if path.exists() else None
    Image.fromarray(image.permute(1, 2, 0).numpy()).save(path, **save)
    assert before in (None, path.stat().st_size)


def test_a_source_edited_between_a_killed_run_and_its_rerun_is_refused_never_mixed(local_ray, tmp_path):
    """Units 1 and 3 of a run did not commit (killed); then b.png (a PNG, read as a stream) and
    c.tif (decoded whole by Pillow) are edited in place, same byte size, other pixels. The re-run
    codes nothing from them: each is a manifest entry naming the change (exit 1), a.png and the
    committed units stand, and a restore names both images instead of mixing two versions; the
    plan records every source's SHA-256."""
    import hashlib

    inp = tmp_path / "in"
    inp.mkdir()
    (inp / "a.png").write_bytes(encode_png(natural_image(100, 150, 0)))  # 2 tiles of 128²
    _same_size_edit(inp / "b.png", natural_image(200, 300, 1), compress_level=0)  # 6 tiles: units 0 and 1
    _same_size_edit(inp / "c.tif", natural_image(200, 300, 2))  # 6 tiles: units 2 and 3
    out = tmp_path / "archive"
    first = archive.run_compress(config(inp, out))
    assert (first.archived, first.units, first.exit_code) == (3, 4, 0)
    plan = json.loads((out / "plan.json").read_text())
    assert plan["inputs_sha256"] == [hashlib.sha256((inp / n).read_bytes()).hexdigest() for n in ("a.png", "b.png", "c.tif")]
    for index in (1, 3):
        unit_file(out, index, "done").unlink()
    edited = {"b.png": natural_image(200, 300, 11), "c.tif": natural_image(200, 300, 12)}
    _same_size_edit(inp / "b.png", edited["b.png"], compress_level=0)
    _same_size_edit(inp / "c.tif", edited["c.tif"])

    again = archive.run_compress(config(inp, out))
    assert (again.units_written, again.units_skipped, again.archived, again.failed, again.exit_code) == (2, 2, 1, 2, 1)
    reasons = {f["path"]: f for f in json.loads((out / "manifest.json").read_text())["failed"]}
    assert reasons.keys() == {"b.png", "c.tif"} and {f["unit"] for f in reasons.values()} == {1, 3}
    for name in reasons:
        assert reasons[name]["reason"].startswith(f"{name} changed since the archive was planned (SHA-256 ")
        assert reasons[name]["reason"].endswith("archive it into a new output")
    assert rows(out, "tiles") and not [t for t in rows(out, "tiles") if (t["path"], t["index"]) in {("b.png", 2), ("c.tif", 4)}]
    third = archive.run_compress(config(inp, out))  # units 1 and 3 coded no tile, yet they are committed: not redone again
    assert (third.units_written, third.units_skipped, third.failed) == (0, 4, 2)

    report = archive.run_decompress(DecompressConfig(str(out), str(tmp_path / "png"), verify=True, sources=str(inp), progress=False))
    assert (report.restored, report.failed, report.exit_code) == (1, 2, 1)
    refused = {r.path: r.reason for r in report.results if r.status == "failed"}
    assert refused.keys() == {"b.png", "c.tif"}
    assert all(why.startswith("not restored: it was archived in part only: ") and "changed since the archive was planned" in why for why in refused.values())
    assert sorted(p.name for p in (tmp_path / "png").iterdir()) == ["a.png", "decompress-summary.json", *RESTORE_FILES]


def test_planning_hashes_each_source_as_a_stream(tmp_path):
    """The plan's SHA-256 of a source is read in pieces through the file its header was read from:
    a 48 MiB source (a PNG whose header reads) never lies in memory whole."""
    import hashlib
    import struct
    import tracemalloc
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    path = tmp_path / "big.png"
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 4096, 4096, 8, 2, 0, 0, 0)))
        f.write(struct.pack(">I", 48 << 20) + b"IDAT")
        for _ in range(48):
            f.write(os.urandom(1 << 20))
    [listed] = storage.list_files(str(path), (".png",))
    tracemalloc.start()
    try:
        planned = planning.probe(listed, 2**25)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert isinstance(planned, archive.PlannedImage) and (planned.width, planned.height) == (4096, 4096)
    assert planned.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert peak < 8 << 20, f"{peak / 2**20:.1f} MiB held while hashing"


def test_verify_with_sources_names_a_source_changed_since_archiving(archived, tmp_path, capsys):
    """`oml restore --verify --sources` with a sources folder where b.png is another image than
    the one archived: its SHA-256 and its PSNR both differ, said on stdout and in
    decompress-summary.json, exit 1 (it said "0 differ", exit 0); the others verify."""
    from pipeline.cli import main

    inp, out, _ = archived
    sources = tmp_path / "sources"
    shutil.copytree(inp, sources)
    (sources / "sub" / "b.png").write_bytes(encode_png(natural_image(200, 300, 8)))
    capsys.readouterr()
    code = main(["restore", "--input", str(out), "--output", str(tmp_path / "png"), "--verify", "--sources", str(sources), "--no-progress"])
    stdout = capsys.readouterr().out
    assert code == 1 and "; 0 failed, 1 differ from compression time" in stdout
    assert f"mismatch: sub/b.png: {SOURCE_CHANGED}; PSNR differs from compression time by up to" in stdout
    summary = json.loads((tmp_path / "png" / "decompress-summary.json").read_text())
    assert [p["path"] for p in summary["problems"]] == ["sub/b.png"] and summary["mismatched"] == 1


def test_a_nan_recorded_psnr_never_verifies(archived, tmp_path):
    """A tile row whose recorded PSNR is NaN (damaged, re-sealed): the PSNR check must fail, not
    take NaN for "no difference" (any comparison with NaN is false)."""
    inp, out, _ = archived

    def nan_psnr(row: dict) -> None:
        if row["path"] == "a.png" and row["index"] == 1:
            row["psnr_after"] = float("nan")

    copy = edited_copy(out, tmp_path / "archive", 0, "tiles", nan_psnr)
    report = archive.run_decompress(DecompressConfig(str(copy), str(tmp_path / "png"), select=("a.png",), verify=True, sources=str(inp), progress=False))
    assert (report.mismatched, report.exit_code) == (1, 1)
    assert report.results[0].reason == "PSNR differs from compression time by up to nan dB"


@pytest.mark.parametrize(
    "command,flag,bad",
    [
        (["restore", "--input", "a", "--output", "b"], "--psnr-tolerance", ("nan", "inf", "-0.5", "x")),
        (["archive", "--input", "a", "--output", "b"], "--lmbda", ("nan", "inf", "0", "-0.01")),
        (["archive", "--input", "a", "--output", "b"], "--target-psnr", ("nan", "inf", "-30")),
        (["archive", "--input", "a", "--output", "b"], "--target-bpp", ("nan", "inf", "0")),
        (["archive", "--input", "a", "--output", "b"], "--cpus-per-worker", ("nan", "inf", "0")),
        (["archive", "--input", "a", "--output", "b"], "--num-gpus", ("nan", "inf", "-1")),
        (["compress", "a.png", "-o", "a.oml"], "--lmbda", ("nan", "inf", "-1")),
        (["compress", "a.png", "-o", "a.oml"], "--target-psnr", ("nan", "-inf")),
        (["compress", "a.png", "-o", "a.oml"], "--target-bpp", ("nan", "inf")),
    ],
)
def test_number_flags_refuse_nan_infinities_and_numbers_out_of_range(capsys, command, flag, bad):
    """--psnr-tolerance nan made the check unable to fail; NaN passes any `<`/`>` range check, so
    every float flag takes only finite numbers in its range: one line, exit 2, before any work."""
    from pipeline.cli import main

    for value in bad:
        with pytest.raises(SystemExit) as stop:
            main([*command, flag, value])
        err = capsys.readouterr().err
        assert stop.value.code == 2 and err.strip().splitlines()[-1].startswith(f"oml {command[0]}: error: argument {flag}"), err


def test_psnr_tolerance_must_be_a_finite_number_not_below_zero():
    for value in (float("nan"), float("inf"), -1.0):
        with pytest.raises(ValueError, match="psnr-tolerance must be a finite number >= 0"):
            DecompressConfig("a", "b", psnr_tolerance=value)


def test_the_plan_copy_restores_an_archive_whose_plan_json_is_lost(archived, tmp_path, capsys):
    """plan.json deleted, or damaged (not JSON; or edited, so that it no longer matches the
    SHA-256 its copy recorded): restore reads plan.copy.json, says so in one line, and restores
    every image bit-identically; compress resumes, skips every committed unit and writes plan.json
    back byte for byte. Both damaged: one line naming both."""
    from pipeline.cli import main

    inp, out, _ = archived
    assert main(["restore", "--input", str(out), "--output", str(tmp_path / "reference"), "--no-progress"]) == 0
    reference = {p.relative_to(tmp_path / "reference"): p.read_bytes() for p in (tmp_path / "reference").rglob("*.png")}
    assert len(reference) == 3
    plan = (out / "plan.json").read_bytes()
    damages = {
        "deleted": (lambda p: p.unlink(), "plan.json is missing: read the plan from plan.copy.json"),
        "garbage": (lambda p: p.write_bytes(b"\0" * 100), "plan.json is damaged (not a plan: "),
        "edited": (lambda p: p.write_text(json.dumps(json.loads(p.read_text()) | {"unit_tiles": 100})), "plan.json differs from the plan its copy recorded"),
    }
    for name, (damage, said) in damages.items():
        copy = tmp_path / name
        shutil.copytree(out, copy)
        damage(copy / "plan.json")
        capsys.readouterr()
        assert main(["restore", "--input", str(copy), "--output", str(tmp_path / f"png-{name}"), "--no-progress"]) == 0
        err = capsys.readouterr().err
        [note] = [line for line in err.splitlines() if line.startswith("note: ")]
        assert said in note and "plan.copy.json" in note
        assert {p.relative_to(tmp_path / f"png-{name}"): p.read_bytes() for p in (tmp_path / f"png-{name}").rglob("*.png")} == reference
    resumed = archive.run_compress(config(inp, tmp_path / "deleted"))
    assert (resumed.units_written, resumed.units_skipped) == (0, 3)
    assert (tmp_path / "deleted" / "plan.json").read_bytes() == plan and "rewrote plan.json" in resumed.notes[0]

    both = tmp_path / "both"
    shutil.copytree(out, both)
    (both / "plan.json").unlink()
    (both / "plan.copy.json").write_text((both / "plan.copy.json").read_text().replace('"unit_tiles": 4', '"unit_tiles": 5'))
    capsys.readouterr()
    assert main(["restore", "--input", str(both), "--output", str(tmp_path / "png-both"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"oml restore: error: {both}: the archive's plan cannot be read: plan.json is missing, and plan.copy.json is damaged (its plan does not match its SHA-256)"]


def test_an_archive_planned_before_source_hashes_restores_and_resumes_saying_what_it_cannot_check(archived, tmp_path):
    """A plan without inputs_sha256 (nor copy): restore reads it as before; a re-run with a unit
    left to code resumes by path and size, as then, and says in one note that an edited source
    would go unnoticed; it adds the plan's copy."""
    inp, out, _ = archived
    old = tmp_path / "old"
    shutil.copytree(out, old)
    plan = json.loads((old / "plan.json").read_text())
    del plan["inputs_sha256"]
    (old / "plan.json").write_text(json.dumps(plan))
    (old / "plan.copy.json").unlink()
    assert archive.run_decompress(DecompressConfig(str(old), str(tmp_path / "png"), progress=False)).exit_code == 0
    unit_file(old, 1, "done").unlink()
    report = archive.run_compress(config(inp, old))
    assert (report.units_written, report.units_skipped, report.archived) == (1, 2, 3)
    [note] = report.notes
    assert note.startswith("plan.json predates source hashes") and "archive into a new output" in note
    assert json.loads((old / "plan.copy.json").read_text())["plan"] == plan
