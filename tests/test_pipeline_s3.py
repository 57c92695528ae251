"""Archive from and to S3 through s3fs, against a moto S3 server on 127.0.0.1 (no network beyond loopback)."""

from __future__ import annotations

import json
import os

import pytest
import torch

from oml import tiling
from oml.imageio import decode_image, encode_png

from .conftest import natural_image, start_local_ray

ray = pytest.importorskip("ray")
moto_server = pytest.importorskip("moto.server")
s3fs = pytest.importorskip("s3fs")

archive = pytest.importorskip("pipeline.archive")
storage = pytest.importorskip("pipeline.storage")
CodingConfig, CompressConfig, DecompressConfig, ModelConfig = archive.CodingConfig, archive.CompressConfig, archive.DecompressConfig, archive.ModelConfig

SECRET = "s3cr3t-that-must-never-be-printed"
BUCKET = "oml-test"


@pytest.fixture(scope="module")
def s3():
    """A moto S3 endpoint on a free loopback port; credentials and endpoint only in the environment."""
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()  # bound before anything uses it: the port is the one the server holds
    port = server.get_host_and_port()[1]
    names = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL", "AWS_EC2_METADATA_DISABLED")
    saved = {k: os.environ.get(k) for k in names}
    os.environ.update(
        AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY=SECRET, AWS_DEFAULT_REGION="us-east-1", AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}",
        AWS_EC2_METADATA_DISABLED="true",  # loopback only: never ask an instance-metadata service
    )
    # fsspec caches filesystems by their arguments: one made earlier in this process
    # (without these credentials) must not be reused.
    s3fs.S3FileSystem.clear_instance_cache()
    # Ray is started after the variables are set, so its workers inherit them.
    start_local_ray()
    try:
        fs = s3fs.S3FileSystem(skip_instance_cache=True)
        fs.mkdir(BUCKET)
        yield fs
    finally:
        ray.shutdown()
        server.stop()
        s3fs.S3FileSystem.clear_instance_cache()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def put_inputs(fs) -> dict[str, bytes]:
    files = {
        "in/a.png": encode_png(natural_image(70, 90, 0)),
        "in/deep/b.PNG": encode_png(natural_image(140, 100, 1)),
        "in/broken.png": b"\x89PNG\r\n\x1a\nnot really",
        "in/readme.md": b"skipped by the extension filter",
    }
    for key, data in files.items():
        fs.pipe_file(f"{BUCKET}/{key}", data)
    return files


def test_listing_reading_and_writing_objects(s3):
    put_inputs(s3)
    listed = storage.list_files(f"s3://{BUCKET}/in/", archive.IMAGE_SUFFIXES)
    assert [f.relative_path for f in listed] == ["a.png", "broken.png", "deep/b.PNG"]
    assert listed[0].uri == f"s3://{BUCKET}/in/a.png" and listed[0].size == len(storage.read_bytes(listed[0].uri))
    storage.write_json(f"s3://{BUCKET}/tmp/x.json", {"k": 1})
    assert storage.exists(f"s3://{BUCKET}/tmp/x.json") and storage.read_json(f"s3://{BUCKET}/tmp/x.json") == {"k": 1}
    assert storage.glob(f"s3://{BUCKET}/tmp/*.json") == [f"s3://{BUCKET}/tmp/x.json"]


def test_s3_round_trip(s3, tmp_path, capfd):
    files = put_inputs(s3)
    config = CompressConfig(
        f"s3://{BUCKET}/in",
        f"s3://{BUCKET}/archive",
        model=ModelConfig(pretrained=False),
        coding=CodingConfig(quality=1, steps=1, tile=128),
        unit_tiles=2,
        min_units=1,
    )
    report = archive.run_compress(config)
    assert (report.images, report.archived, report.failed) == (3, 2, 1)
    keys = sorted(k.split("/", 2)[2] for k in s3.find(f"{BUCKET}/archive"))
    assert keys == [
        "manifest.json",
        "plan.json",
        "summary.json",
        "units/unit-000000.done.json",
        "units/unit-000000.images.parquet",
        "units/unit-000000.tiles.parquet",
        "units/unit-000001.done.json",
        "units/unit-000001.images.parquet",
        "units/unit-000001.tiles.parquet",
    ]
    manifest = json.loads(s3.cat_file(f"{BUCKET}/archive/manifest.json"))
    assert [f["path"] for f in manifest["failed"]] == ["broken.png"]

    again = archive.run_compress(config)
    assert (again.units_written, again.units_skipped) == (0, 2)

    to_s3 = archive.run_decompress(DecompressConfig(f"s3://{BUCKET}/archive", f"s3://{BUCKET}/restored", verify=True, sources=f"s3://{BUCKET}/in"))
    assert (to_s3.restored, to_s3.mismatched) == (2, 0)
    assert all(r.checks.get("max_psnr_error") == 0.0 for r in to_s3.results)  # the sources named were read from S3
    restored = decode_image(s3.cat_file(f"{BUCKET}/restored/deep/b.png"))
    assert restored.shape == decode_image(files["in/deep/b.PNG"]).shape

    # A window reads its row groups by ranges of the S3 objects, each checked against the marker.
    window = archive.run_decompress(DecompressConfig(f"s3://{BUCKET}/archive", str(tmp_path / "win"), select=("*/b.PNG",), region=tiling.Region(10, 100, 60, 30)))
    tiles_files = sum(s3.size(k) for k in s3.find(f"{BUCKET}/archive/units") if k.endswith(".tiles.parquet"))
    assert window.exit_code == 0 and 0 < window.results[0].bytes_read < tiles_files  # footers and groups, not the leading magic
    assert torch.equal(decode_image((tmp_path / "win" / "deep" / "b.png").read_bytes()), restored[:, 100:130, 10:70])

    local = archive.run_decompress(DecompressConfig(f"s3://{BUCKET}/archive", str(tmp_path), select=("*/a.png",)))
    assert [r.path for r in local.results] == ["a.png"] and (tmp_path / "a.png").is_file()

    written = [s3.cat_file(k) for k in s3.find(f"{BUCKET}/archive") if k.endswith(".json")]
    out, err = capfd.readouterr()
    for text in [out, err, *(w.decode() for w in written)]:
        assert SECRET not in text
