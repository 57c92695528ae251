"""The archiving pipeline on a local Ray (2 CPUs): shards, resume, killed workers, bad inputs, decompression."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from oml import codec
from oml.imageio import decode_image, encode_png

from .conftest import natural_image, start_local_ray

ray = pytest.importorskip("ray")
pq = pytest.importorskip("pyarrow.parquet")

archive = pytest.importorskip("pipeline.archive")
schema = pytest.importorskip("pipeline.schema")
storage = pytest.importorskip("pipeline.storage")
CodingConfig, CompressConfig, DecompressConfig, ModelConfig = archive.CodingConfig, archive.CompressConfig, archive.DecompressConfig, archive.ModelConfig

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
    base = CompressConfig(str(inp), str(out), model=MODEL, coding=CODING, shard_size=3, progress=False)
    return dataclasses.replace(base, **changes)


def rows(out: Path) -> list[dict]:
    return [r for f in sorted((out / "shards").glob("*.parquet")) for r in pq.read_table(f).to_pylist()]


def snapshot(out: Path, pattern: str = "*") -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((out / "shards").glob(pattern))}


def rewrite_shard(shard: Path, table: list[dict]) -> None:
    """Write ``table`` as the shard's Parquet file and re-seal its marker (as a forger would)."""
    data = schema.to_parquet(table)
    shard.write_bytes(data)
    marker = shard.with_name(shard.name.replace(".parquet", ".done.json"))
    sealed = json.loads(marker.read_text()) | {"parquet_bytes": len(data), "parquet_sha256": schema.sha256(data)}
    marker.write_text(json.dumps(sealed))


def edited_copy(out: Path, copy: Path, path: str, edit) -> Path:
    """A copy of the archive ``out`` whose row for ``path`` (in the first shard) went through ``edit``."""
    shutil.copytree(out, copy)
    shard = copy / "shards" / "shard-000000.parquet"
    table = pq.read_table(shard).to_pylist()
    edit(next(r for r in table if r["path"] == path))
    rewrite_shard(shard, table)
    return copy


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


def test_shards_are_deterministic_cuts_of_the_sorted_listing(tmp_path):
    inp = make_inputs(tmp_path)
    files = storage.list_files(str(inp), archive.IMAGE_SUFFIXES)
    assert [f.relative_path for f in files] == sorted(f.relative_path for f in files)
    assert "notes.txt" not in [f.relative_path for f in files] and len(files) == 8
    shards = archive.make_shards(files, 3)
    assert [len(s.files) for s in shards] == [3, 3, 2]
    assert shards == archive.make_shards(storage.list_files(str(inp), archive.IMAGE_SUFFIXES), 3)


def test_archived_bytes_are_the_codec_bytes(model):
    image = natural_image(200, 300, 1)
    header, coded, tiles = archive.encode_image(model, image, CODING)
    assert coded == codec.encode(model, image, quality=2, adapt_config=CODING.adapt, tile_size=128).data
    assert len(tiles) == header.num_tiles == 6
    row = schema.image_row("src", "p", b"raw", header, coded, tiles)
    assert schema.coded_bytes(row) == coded
    # Through Parquet and back: float16 λ*, binary strings and float32 λ_t survive exactly.
    back = schema.read_parquet(schema.to_parquet([row])).to_pylist()[0]
    assert schema.coded_bytes(back) == coded
    assert torch.equal(codec.decode(model, coded), codec.encode(model, image, quality=2, adapt_config=CODING.adapt, tile_size=128).reconstruction)


def test_png_names_keep_distinct_sources_apart():
    names = archive.png_names(["a.jpg", "a.png", "b/c.tif"])
    assert names == {"a.jpg": "a.jpg.png", "a.png": "a.png.png", "b/c.tif": "b/c.png"}


def test_the_marker_is_written_only_after_its_parquet_file(model, tmp_path, monkeypatch):
    """A shard whose Parquet write fails leaves no marker (so it is redone); a finished shard's
    marker names the very bytes on disk."""
    inp = tmp_path / "in"
    inp.mkdir()
    (inp / "a.png").write_bytes(encode_png(natural_image(64, 64)))
    shard = archive.Shard(0, tuple(storage.list_files(str(inp), (".png",))))
    encoder = archive.ShardEncoder(str(tmp_path / "out"), MODEL, CODING, model.fingerprint(CODING.quality).hex())
    real = storage.write_bytes

    def failing(uri, data):
        if uri.endswith(".parquet"):
            raise OSError("disk full")
        real(uri, data)

    monkeypatch.setattr(storage, "write_bytes", failing)
    with pytest.raises(OSError, match="disk full"):
        encoder(shard)
    assert not (tmp_path / "out" / "shards" / "shard-000000.done.json").exists()
    monkeypatch.setattr(storage, "write_bytes", real)
    result = encoder(shard)
    marker = archive.read_marker(str(tmp_path / "out" / "shards" / "shard-000000.done.json")).result
    assert marker == result and result.images == 1


def test_config_errors_are_clear():
    with pytest.raises(ValueError, match="steps"):
        CodingConfig(steps=-1)
    with pytest.raises(ValueError, match="multiple of 64"):
        CodingConfig(tile=100)
    with pytest.raises(ValueError, match="tile size 70016 is over the format's limit"):
        CodingConfig(tile=70016)  # before: struct.error in every worker, and "run again"
    with pytest.raises(ValueError, match="shard_size"):
        CompressConfig("a", "b", shard_size=0)


# --------------------------------------------------------------------------- compression on Ray


def test_bad_inputs_are_in_the_manifest_and_the_job_completes(archived):
    _, out, report = archived
    assert (report.images, report.archived, report.failed, report.exit_code) == (8, 3, 5, 1)
    manifest = json.loads((out / "manifest.json").read_text())
    reasons = {f["path"]: f["reason"] for f in manifest["failed"]}
    assert set(reasons) == set(BAD_REASONS)
    for name, words in BAD_REASONS.items():
        assert words in reasons[name], (name, reasons[name])
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["images"], summary["archived"], summary["failed"]) == (8, 3, 5)
    assert summary["shards"] == {"total": 3, "committed": 3, "skipped": 0, "written": 3, "failed": 0}
    assert summary["mean_bpp"] > 0 and summary["last_run"]["images_per_second"] > 0


def test_rows_follow_the_schema_and_rebuild_the_codec_bytes(archived, model):
    inp, out, _ = archived
    table = pq.read_table(out / "shards" / "shard-000000.parquet")
    assert table.schema.remove_metadata() == schema.SCHEMA.remove_metadata()
    got = rows(out)
    assert sorted(r["path"] for r in got) == sorted(GOOD)
    for r in got:
        data = (inp / r["path"]).read_bytes()
        image = decode_image(data)
        assert r["source_sha256"] == schema.sha256(data) and r["source_bytes"] == len(data)
        assert (r["height"], r["width"], r["model"], r["quality"]) == (*image.shape[1:], "oml-default", 2)
        expected = codec.encode(model, image, quality=2, adapt_config=CODING.adapt, tile_size=128)
        assert schema.coded_bytes(r) == expected.data and r["coded_sha256"] == schema.sha256(expected.data)
        assert [t["psnr_after"] for t in r["tiles"]] == [t.psnr_after for t in expected.tiles]
        assert all(len(t["lambdas"]) == model.num_lambdas for t in r["tiles"])


def test_second_run_skips_committed_shards_and_adds_nothing(archived):
    inp, out, _ = archived
    before = snapshot(out)
    report = archive.run_compress(config(inp, out))
    assert (report.shards_written, report.shards_skipped, report.archived, report.failed) == (0, 3, 3, 5)
    assert snapshot(out) == before
    assert len(rows(out)) == 3


def test_unfinished_shard_is_redone_without_duplicates(archived, tmp_path):
    inp, out, _ = archived
    copy = tmp_path / "archive"
    shutil.copytree(out, copy)
    # A crash after a partial Parquet write and before the done marker.
    (copy / "shards" / "shard-000001.done.json").unlink()
    (copy / "shards" / "shard-000001.parquet").write_bytes(b"PAR1 half written")
    (copy / "shards" / "shard-000001.parquet.0123abcd.tmp").write_bytes(b"PAR1 a killed writer's")
    report = archive.run_compress(config(inp, copy))
    assert not list((copy / "shards").glob("*.tmp"))
    assert (report.shards_written, report.shards_skipped, report.exit_code) == (1, 2, 1)
    assert sorted(r["path"] for r in rows(copy)) == sorted(GOOD)
    assert snapshot(copy, "*.parquet") == snapshot(out, "*.parquet")  # markers differ only in timings


@pytest.mark.parametrize(
    "damage,why",
    [
        (lambda d: (d / "shard-000001.parquet").write_bytes((d / "shard-000001.parquet").read_bytes()[:100]), "its Parquet file is 100 bytes"),
        (lambda d: (d / "shard-000001.parquet").unlink(), "its Parquet file is missing"),
        (lambda d: (d / "shard-000001.done.json").write_text("{}"), "damaged marker"),
        (lambda d: (d / "shard-000001.done.json").write_text('{"format": "oml-arch'), "damaged marker"),
        (lambda d: (d / "shard-000001.done.json").unlink(), "shard not committed"),
    ],
)
def test_damaged_shards_are_named_by_decompress_and_repaired_by_compress(archived, tmp_path, damage, why):
    """A truncated, missing or unmarked shard: decompress restores the rest and names it (exit 1);
    the next compress run redoes exactly that shard, after which everything restores."""
    inp, out, _ = archived
    copy = tmp_path / "archive"
    shutil.copytree(out, copy)
    damage(copy / "shards")
    report = archive.run_decompress(DecompressConfig(str(copy), str(tmp_path / "png"), progress=False))
    assert report.exit_code == 1 and report.restored == 1  # a.png; shard 1 held sub/b.png and sub/deeper/c.jpg
    assert any(why in r.reason for r in report.results if r.status == "failed"), [r.reason for r in report.results]
    again = archive.run_compress(config(inp, copy))
    assert (again.shards_written, again.shards_skipped) == (1, 2)
    assert snapshot(copy, "*.parquet") == snapshot(out, "*.parquet")
    report = archive.run_decompress(DecompressConfig(str(copy), str(tmp_path / "png2"), progress=False))
    assert (report.selected, report.restored, report.exit_code) == (3, 3, 0)


def test_a_killed_worker_loses_nothing(archived, tmp_path):
    inp, out, _ = archived
    flag = tmp_path / "killed-once"

    @dataclasses.dataclass(frozen=True)
    class DiesOnce(archive.ShardEncoder):
        flag: str = ""

        def __call__(self, shard):
            if shard.index == 1 and not os.path.exists(self.flag):
                Path(self.flag).write_text(str(os.getpid()))
                storage.write_bytes(archive.shard_uri(self.output, 1), b"PAR1 torn")
                os._exit(9)  # the worker process dies mid-shard, as under SIGKILL or the OOM killer
            return super().__call__(shard)

    target = tmp_path / "archive"
    fingerprint = archive.get_model(MODEL, CODING.quality).fingerprint(CODING.quality).hex()
    encoder = DiesOnce(str(target), MODEL, CODING, fingerprint, flag=str(flag))
    report = archive.run_compress(config(inp, target), encoder=encoder)
    assert flag.exists() and int(flag.read_text()) != os.getpid()
    assert (report.archived, report.failed, report.shards_written, report.shards_failed) == (3, 5, 3, ())
    assert sorted(r["path"] for r in rows(target)) == sorted(GOOD)
    assert snapshot(target, "*.parquet") == snapshot(out, "*.parquet")


def test_a_rerun_with_other_settings_or_inputs_is_refused(archived, tmp_path):
    inp, out, _ = archived
    with pytest.raises(ValueError, match="coding"):
        archive.run_compress(config(inp, out, coding=dataclasses.replace(CODING, quality=3)))
    more = tmp_path / "inputs"
    shutil.copytree(inp, more)
    (more / "new.png").write_bytes(encode_png(natural_image(64, 64)))
    with pytest.raises(ValueError, match="listing now has 9 files"):
        archive.run_compress(config(more, out))


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


def test_decompress_a_selection(archived, tmp_path):
    inp, out, _ = archived
    by_glob = archive.run_decompress(DecompressConfig(str(out), str(tmp_path / "g"), select=("sub/*",), progress=False))
    assert sorted(r.path for r in by_glob.results) == ["sub/b.png", "sub/deeper/c.jpg"]
    by_uri = archive.run_decompress(DecompressConfig(str(out), str(tmp_path / "u"), select=(str(inp / "a.png"),), progress=False))
    assert [r.path for r in by_uri.results] == ["a.png"]
    assert sorted(p.name for p in (tmp_path / "u").iterdir()) == ["a.png", "decompress-summary.json"]
    with pytest.raises(ValueError, match="matches the selection"):
        archive.run_decompress(DecompressConfig(str(out), str(tmp_path / "n"), select=("nothing*",), progress=False))


def test_verify_reports_damaged_records_and_changed_sources(archived, tmp_path):
    inp, out, _ = archived

    def flip_lambda(row: dict) -> None:
        row["tiles"][0]["lambdas"][0] = 0.5  # a flipped λ* value: still decodable, no longer the coded file

    copy = edited_copy(out, tmp_path / "archive", "a.png", flip_lambda)
    for verify in (True, False):  # checked on every decode, not only under --verify
        report = archive.run_decompress(DecompressConfig(str(copy), str(tmp_path / f"png{verify}"), select=("a.png",), verify=verify, progress=False))
        assert (report.failed, report.exit_code) == (1, 1)
        assert "coded checksum" in report.results[0].reason and not (tmp_path / f"png{verify}" / "a.png").exists()

    # A source edited after compression: the bit-exact reconstruction check still passes.
    moved = tmp_path / "inputs"
    shutil.copytree(inp, moved)
    plan = json.loads((out / "plan.json").read_text())
    assert plan["files"] == 8
    (inp / "sub" / "b.png").write_bytes((inp / "sub" / "b.png").read_bytes() + b"\0")
    try:
        report = archive.run_decompress(DecompressConfig(str(out), str(tmp_path / "png2"), select=("sub/b.png",), verify=True, sources=str(inp), progress=False))
    finally:
        shutil.copy(moved / "sub" / "b.png", inp / "sub" / "b.png")
    assert report.exit_code == 0 and report.results[0].checks == {"checks_source": "source changed since compression", "bit_exact": True}


def test_a_desynchronised_tile_is_in_the_summary_not_in_the_output(archived, tmp_path):
    """A row whose decoded symbols do not match its symbol check (here the check itself is
    altered; a desynchronised decoder looks the same): one failure naming the tile, recorded in
    decompress-summary.json, no PNG, exit status 1, the other images restored."""
    _, out, _ = archived

    def alter_check(row: dict) -> None:
        row["tiles"][1]["check"] ^= 1
        row["coded_sha256"] = schema.sha256(schema.coded_bytes(row))  # a consistent record

    copy = edited_copy(out, tmp_path / "archive", "a.png", alter_check)
    report = archive.run_decompress(DecompressConfig(str(copy), str(tmp_path / "png"), progress=False))
    assert (report.selected, report.restored, report.failed, report.exit_code) == (3, 2, 1, 1)
    summary = json.loads((tmp_path / "png" / "decompress-summary.json").read_text())
    [problem] = summary["problems"]
    assert problem["path"] == "a.png" and problem["status"] == "failed" and "desync in tile 1" in problem["reason"]
    assert not (tmp_path / "png" / "a.png").exists()


def test_rows_cannot_place_files_or_make_the_decoder_fetch(archived, tmp_path):
    """Forged rows: paths that climb out or are absolute are refused and listed; a source URI
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
        for shard in (copy / "shards").glob("*.parquet"):
            table = pq.read_table(shard).to_pylist()
            for row in table:
                if row["path"] in paths or row["path"] == "sub/deeper/c.jpg":
                    forge(row)
            rewrite_shard(shard, table)
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


def test_rate_control_in_the_ray_job_meets_reachable_targets_and_lists_the_rest(local_ray, tmp_path):
    """--target-psnr on the job: each image's row holds the file that met the target, at its own λ;
    an image that cannot reach it (noise) is a manifest entry naming the reachable range."""
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
    restored = codec.decode(model, schema.coded_bytes(row))
    assert abs(image_psnr(restored, smooth) - target) <= 0.1 and model.lambda_range[0] < row["lmbda"] < model.lambda_range[1]
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    [entry] = manifest["failed"]
    assert entry["path"] == "noise.png" and "outside what oml-default reaches on this image" in entry["reason"]
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["target"] == ["psnr", target]
