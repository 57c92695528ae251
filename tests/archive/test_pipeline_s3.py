"""Archive from and to S3 through s3fs, against a moto S3 server on 127.0.0.1 (no network beyond loopback)."""

from __future__ import annotations

import json
import os

import pytest
import torch

from oml import tiling
from oml.imageio import decode_image, encode_png

from ..conftest import natural_image, start_local_ray

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
        "plan.copy.json",
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


def _check_credentials(count: str) -> None:
    """moto's own switch: from now on every request's credentials are checked (``"0"``: the test's
    keys are unknown to it, so each request is refused, 403), or none (``"inf"``)."""
    import urllib.request

    request = urllib.request.Request(f"{os.environ['AWS_ENDPOINT_URL']}/moto-api/reset-auth", data=count.encode(), method="POST", headers={"Content-Type": "text/plain"})
    with urllib.request.urlopen(request) as answer:
        assert json.loads(answer.read())["status"] == "ok"


def test_refused_credentials_are_said_as_such_never_taken_for_a_missing_file(s3, tmp_path, capsys):
    """With credentials the store refuses (403 InvalidAccessKeyId), restoring an S3 archive said
    "not an oml archive (no plan.json)" (exit 2); archiving to or from S3 and --verify --sources on
    S3 said "storage unreachable or refused" or silently compared nothing. Each is now one line
    naming the refusal, exit 1, and nothing is written."""
    from pipeline.cli import main

    put_inputs(s3)
    local = tmp_path / "archive"
    report = archive.run_compress(CompressConfig(f"s3://{BUCKET}/in", str(local), model=ModelConfig(pretrained=False), coding=CodingConfig(quality=1, tile=128), progress=False))
    assert report.archived == 2
    s3.put(str(local), f"{BUCKET}/refused/archive", recursive=True)  # the same archive on S3
    assert s3.exists(f"{BUCKET}/refused/archive/plan.json")
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "a.png").write_bytes(encode_png(natural_image(40, 40, 3)))
    coding = ["--random-weights", "--tile", "128", "--no-progress", "--max-retries", "0"]
    capsys.readouterr()
    said = {}
    _check_credentials("0")
    try:
        for argv in (
            ["restore", "--input", f"s3://{BUCKET}/refused/archive", "--output", str(tmp_path / "out1"), "--no-progress"],
            ["archive", "--input", str(photos), "--output", f"s3://{BUCKET}/refused/new", *coding],
            ["archive", "--input", f"s3://{BUCKET}/in", "--output", str(tmp_path / "out2"), *coding],
            ["restore", "--input", str(local), "--output", str(tmp_path / "out3"), "--verify", "--sources", f"s3://{BUCKET}/in", "--no-progress"],
        ):
            code = main(argv)
            said[" ".join(argv[:3])] = (code, capsys.readouterr().err)
    finally:
        _check_credentials("inf")
    wrong = {
        command: (code, err)
        for command, (code, err) in said.items()
        if not (code == 1 and err.count("\n") == 1 and "error: storage refused the request (credentials?) for s3://" in err and ("InvalidAccessKeyId" in err or "403" in err))
    }
    assert wrong == {}
    assert not any((tmp_path / f"out{i}").exists() and list((tmp_path / f"out{i}").rglob("*.png")) for i in (1, 2, 3))
    assert not s3.exists(f"{BUCKET}/refused/new")


def test_a_prefix_whose_listing_is_refused_fails_the_listing_not_silently(s3, monkeypatch):
    """An S3 endpoint that refuses to list one prefix (AccessDenied, as a bucket policy with a prefix
    condition answers; here a proxy in front of moto on 127.0.0.1): the listing fails with that
    error instead of leaving the prefix's images out (fsspec's find omits a prefix whose listing
    fails)."""
    import http.client
    import http.server
    import threading
    from urllib.parse import parse_qs, urlsplit

    put_inputs(s3)
    s3.pipe_file(f"{BUCKET}/in/secret/c.png", encode_png(natural_image(64, 64, 2)))
    moto = urlsplit(os.environ["AWS_ENDPOINT_URL"])

    class Proxy(http.server.BaseHTTPRequestHandler):
        def _relay(self):
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if parse_qs(urlsplit(self.path).query).get("prefix") == ["in/secret/"]:
                denied = b"<?xml version='1.0'?><Error><Code>AccessDenied</Code><Message>Access Denied</Message></Error>"
                self.send_response(403)
                self.send_header("Content-Type", "application/xml")
                self.send_header("Content-Length", str(len(denied)))
                self.end_headers()
                self.wfile.write(denied)
                return
            upstream = http.client.HTTPConnection(moto.hostname, moto.port, timeout=30)
            upstream.request(self.command, self.path, body=body, headers=dict(self.headers))
            answer = upstream.getresponse()
            data = answer.read()
            self.send_response(answer.status)
            for key, value in answer.getheaders():
                if key.lower() not in ("content-length", "transfer-encoding", "connection"):
                    self.send_header(key, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            upstream.close()

        do_GET = do_PUT = do_HEAD = do_POST = do_DELETE = _relay  # noqa: N815 - the stdlib's names

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Proxy)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{server.server_port}")
    s3fs.S3FileSystem.clear_instance_cache()
    try:
        with pytest.raises(Exception, match="Access Denied"):  # the store's refusal, said as such
            storage.list_files(f"s3://{BUCKET}/in/", archive.IMAGE_SUFFIXES)
    finally:
        server.shutdown()
        s3fs.S3FileSystem.clear_instance_cache()
