"""Several shipped versions of one model's weights: a file decodes with the version that coded it,
found by its fingerprint, and a weights file carries the widths it was built with."""

from __future__ import annotations

import http.server
import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from oml import codec
from oml.models import weights, zoo
from oml.names import ModelUnavailableError
from tests.conftest import natural_image


def _random(seed: int, config: dict | None = None):
    torch.manual_seed(seed)
    model = zoo._build("oml-default", (1, 2, 3, 4), (1, 2, 3, 4), pretrained=False, config=config)
    model.update_entropy_models()
    return model.eval()


@pytest.fixture(scope="module")
def versions(tmp_path_factory):
    """Two weights files of oml-default: an older one (default widths) and a newer, narrower one."""
    folder = tmp_path_factory.mktemp("weights")
    old, new = folder / "oml-default-v1.pt", folder / "oml-default.pt"
    zoo.save_weights(_random(0), old)
    zoo.save_weights(_random(1, {"N": 32, "M": 48}), new)
    return old, new


def test_each_file_decodes_with_the_version_that_coded_it(versions):
    old, new = versions
    image = natural_image(64, 96)
    for path in (old, new):
        encoder = zoo.load_model("oml-default", 2, weights=path)
        enc = codec.encode(encoder, image, quality=2)
        header = codec.read_header(enc.data)
        decoder = zoo.load_decoder("oml-default", 2, header.fingerprint, header.version, candidates=[new, old])
        assert torch.equal(codec.decode(decoder, enc.data), enc.reconstruction)


def test_no_matching_version_is_the_codecs_clear_error(versions):
    old, new = versions
    enc = codec.encode(zoo.load_model("oml-default", 1, weights=old), natural_image(64, 64), quality=1)
    header = codec.read_header(enc.data)
    decoder = zoo.load_decoder("oml-default", 1, header.fingerprint, header.version, candidates=[new])
    with pytest.raises(codec.CodecError, match="other weights"):
        codec.decode(decoder, enc.data)
    # a user's own weights file is the only candidate when given
    with pytest.raises(codec.CodecError, match="other weights"):
        codec.decode(zoo.load_decoder("oml-default", 1, header.fingerprint, weights=new, candidates=[old]), enc.data)


def test_widths_travel_in_the_weights_file(versions, tmp_path):
    _, new = versions
    model = zoo.load_model("oml-default", 1, weights=new)
    assert (model.encoders["0"].N, model.encoders["0"].M, model.latent_channels) == (32, 48, 48)
    state = weights.read_stored(new)
    assert state["architecture"] == {"kind": "mean_scale", "N": 32, "M": 48, "context": False, "offsets": False}
    for forged in (dict(state, config={"N": 32, "M": 10**6}), dict(state, architecture=dict(state["architecture"], N=10**6)), dict(state, architecture=dict(state["architecture"], kind="checkerboard"))):
        torch.save(forged, tmp_path / "forged.pt")
        with pytest.raises(ModelUnavailableError, match="architecture"):
            zoo.load_model("oml-default", 1, weights=tmp_path / "forged.pt")


def test_the_architecture_is_read_from_the_file_and_guessed_only_for_older_files(tmp_path):
    """A file says what it builds (λ-offset branches here); files written before that was recorded
    are read by their tensor names, as before."""
    model = _random(2)
    model.synthesis.add_offsets()
    path = tmp_path / "branches.pt"
    zoo.save_weights(model, path)
    assert zoo.load_model("oml-default", 1, weights=path).synthesis.offsets is not None
    state = weights.read_stored(path)
    older = tmp_path / "older.pt"
    torch.save({k: v for k, v in state.items() if k != "architecture"}, older)  # as written before
    assert zoo.load_model("oml-default", 1, weights=older).fingerprint(1) == model.fingerprint(1)
    torch.save(dict(state, architecture=dict(state["architecture"], offsets=False)), tmp_path / "said.pt")
    with pytest.raises(ModelUnavailableError, match="does not match the architecture"):  # built as the file says
        zoo.load_model("oml-default", 1, weights=tmp_path / "said.pt")


@pytest.fixture()
def isolated(tmp_path, monkeypatch):
    """A weights path of the package's folder only: no $OML_WEIGHTS_PATH, an empty cache, the
    checkout's weights/ left out, no download allowed, no mirror."""
    for name in (weights.PATH_ENV, weights.DOWNLOAD_ENV, weights.URL_ENV):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv(weights.NO_CHECKOUT_ENV, "1")
    return tmp_path


def _manifest_of(folder: Path, older: Path, versions: list[Path]) -> None:
    """A package folder whose manifest releases ``versions`` in turn, as jobs/release_weights.py
    does: each becomes ``oml-default.pt`` and moves to ``older/`` when the next one ships."""
    from jobs.release_weights import release

    (folder / "manifest.json").write_text(json.dumps({"format": weights.MANIFEST_FORMAT, "url": "https://example.invalid/weights/", "models": {}}))
    for k, path in enumerate(versions, 1):
        if k > 1:
            (folder / "oml-default.pt").rename(older / f"oml-default-v{k - 1}.pt")
        shutil.copy(path, folder / "oml-default.pt")
        release(f"v{k}", folder / "manifest.json", [older])


def test_oml_decompress_finds_the_release_a_file_names_on_the_weights_path(versions, isolated, tmp_path, monkeypatch, capsys):
    """Files coded with the current and with an earlier release restore through the CLI with no
    --weights, the earlier one from a folder on $OML_WEIGHTS_PATH; without it, one line says which
    release is missing and where its file goes; weights never released get the codec's error."""
    from oml.imageio import decode_image
    from pipeline import cli

    old, new = versions
    package, older = tmp_path / "package", tmp_path / "older"
    package.mkdir()
    older.mkdir()
    _manifest_of(package, older, [old, new])
    monkeypatch.setattr(weights, "package_folder", lambda: package)
    assert [(r.version, r.file) for r in weights.manifest().newest_first("oml-default")] == [("v2", "oml-default.pt"), ("v1", "oml-default-v1.pt")]
    stray = tmp_path / "stray.pt"
    zoo.save_weights(_random(7), stray)
    image = natural_image(64, 96)
    coded = {}
    for path in (old, new, stray):
        enc = codec.encode(zoo.load_model("oml-default", 3, weights=path), image, quality=3)
        coded[path] = (tmp_path / f"{path.stem}.oml", enc.reconstruction)
        coded[path][0].write_bytes(enc.data)
    header = codec.read_header(coded[old][0].read_bytes())
    capsys.readouterr()
    assert cli.main(["decompress", str(coded[old][0]), "-o", str(tmp_path / "missing.png")]) != 0
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if header.fingerprint.hex() in line]
    assert len(lines) == 1 and "Traceback" not in err and not (tmp_path / "missing.png").exists()
    assert all(word in lines[0] for word in ("oml-default v1", "oml-default-v1.pt", weights.PATH_ENV, weights.DOWNLOAD_ENV))
    monkeypatch.setenv(weights.PATH_ENV, str(older))
    for path in (old, new, stray):
        out = tmp_path / f"{path.stem}.png"
        status = cli.main(["decompress", str(coded[path][0]), "-o", str(out)])
        if path is stray:
            assert status == 1 and not out.exists()
        else:
            assert status == 0 and torch.equal(decode_image(out.read_bytes()), coded[path][1])


def test_releases_are_listed_from_the_manifest_as_found_on_the_weights_path(isolated, tmp_path, monkeypatch):
    """The wheel's folder holds the current release (and its base, were it an overlay); older ones count where a folder
    of the path holds their file with the manifest's size and SHA-256."""
    folder = tmp_path / "mine"
    folder.mkdir()
    shutil.copy(weights.find_release(_release("v2"), [REPOSITORY_WEIGHTS]), folder)
    wrong = bytearray(weights.find_release(_release("v1"), [REPOSITORY_WEIGHTS]).read_bytes())
    wrong[len(wrong) // 2] ^= 1
    (folder / "oml-default-v1.pt").write_bytes(bytes(wrong))
    monkeypatch.setenv(weights.PATH_ENV, os.pathsep.join([str(tmp_path / "none"), str(folder)]))
    listed = zoo.packaged_weights("oml-default")
    assert [(p.parent, p.name) for p in listed] == [(weights.package_folder(), "oml-default.pt"), (folder, "oml-default-v2.pt")]
    monkeypatch.delenv(weights.NO_CHECKOUT_ENV)
    assert len(zoo.packaged_weights("oml-default")) == 11  # v1-v11, the checkout's weights/ included


REPOSITORY_WEIGHTS = Path(__file__).resolve().parents[2] / "weights"
V1_FILE = Path(__file__).parents[1] / "expected" / "v1-kodim05-crop.oml"


def _release(version: str) -> weights.Release:
    return weights.manifest().release("oml-default", version)


def test_a_file_coded_by_v1_decodes_by_its_fingerprint_loading_v1_alone(isolated, tmp_path, monkeypatch):
    """``tests/expected/v1-kodim05-crop.oml`` names v1 by fingerprint: the manifest says which file
    that is, and only that file is read (not every release, newest first), from whichever folder
    of the weights path holds it. Without it, one line names the release and where it goes."""
    data = V1_FILE.read_bytes()
    header = codec.read_header(data)
    with pytest.raises(weights.MissingWeightsError) as missing:
        zoo.load_decoder(header.model, header.quality, header.fingerprint, header.version)
    message = str(missing.value)
    assert "\n" not in message and header.fingerprint.hex() in message and "oml-default v1 " in message
    assert "oml-default-v1.pt" in message and str(tmp_path / "cache" / "oml" / "weights") in message and weights.PATH_ENV in message
    folder = tmp_path / "v1"
    folder.mkdir()
    shutil.copy(REPOSITORY_WEIGHTS / "oml-default-v1.pt", folder)
    monkeypatch.setenv(weights.PATH_ENV, str(folder))
    read = []
    load = weights.load_weights
    monkeypatch.setattr(weights, "load_weights", lambda source, *a: read.append(Path(source)) or load(source, *a))
    decoder = zoo.load_decoder(header.model, header.quality, header.fingerprint, header.version)
    assert read == [folder / "oml-default-v1.pt"]
    assert codec.decode(decoder, data).shape == (3, header.height, header.width)


class _Releases(http.server.SimpleHTTPRequestHandler):
    """Serves a folder; remembers every path asked for."""

    asked: list[str] = []

    def do_GET(self):
        self.asked.append(self.path)
        super().do_GET()

    def log_message(self, *args):
        pass


def test_an_old_release_is_downloaded_only_when_allowed_and_kept_only_if_its_hash_matches(isolated, tmp_path, monkeypatch):
    """A release missing here comes from a mirror on 127.0.0.1 ($OML_WEIGHTS_URL) once the user
    allows downloads ($OML_WEIGHTS_DOWNLOAD=1); a download whose bytes are not the manifest's is
    refused and nothing of it stays in the cache; the kept file serves later decodes."""
    import functools
    import threading

    served = tmp_path / "served"
    for name in ("good", "bad"):
        (served / name).mkdir(parents=True)
    v1 = (REPOSITORY_WEIGHTS / "oml-default-v1.pt").read_bytes()
    (served / "good" / "oml-default-v1.pt").write_bytes(v1)
    (served / "bad" / "oml-default-v1.pt").write_bytes(v1[:-4] + bytes(4))  # same size, other bytes
    handler = functools.partial(_Releases, directory=str(served))
    _Releases.asked = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}"
        data = V1_FILE.read_bytes()
        header = codec.read_header(data)
        cache = weights.cache_folder()

        def decoder():
            return zoo.load_decoder(header.model, header.quality, header.fingerprint, header.version)

        monkeypatch.setenv(weights.URL_ENV, f"{base}/good/")
        with pytest.raises(weights.MissingWeightsError, match=weights.DOWNLOAD_ENV):
            decoder()
        assert _Releases.asked == []  # never without the user's leave
        monkeypatch.setenv(weights.DOWNLOAD_ENV, "1")
        monkeypatch.setenv(weights.URL_ENV, f"{base}/bad")
        with pytest.raises(weights.MissingWeightsError, match="refused"):
            decoder()
        assert _Releases.asked == ["/bad/oml-default-v1.pt"] and not [p for p in cache.rglob("*") if p.is_file()]
        monkeypatch.setenv(weights.URL_ENV, f"{base}/good")
        assert codec.decode(decoder(), data).shape == (3, header.height, header.width)
        assert sorted(p.name for p in cache.iterdir()) == ["oml-default-v1.pt"] and (cache / "oml-default-v1.pt").read_bytes() == v1
        decoder()
        assert _Releases.asked == ["/bad/oml-default-v1.pt", "/good/oml-default-v1.pt"]  # the cached file serves from then on
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_the_wheel_carries_the_current_release_only_and_the_manifest_lists_every_file():
    """package-data takes the current release and, for an overlay, its base (under 25 MB); every older release is
    in the repository's weights/, and each file is listed with its size and SHA-256; the current
    release's fingerprint is the one the manifest gives."""
    import glob
    import hashlib

    tomllib = pytest.importorskip("tomllib")
    root = Path(__file__).resolve().parents[2]
    patterns = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["oml"]
    shipped = {Path(p) for pattern in patterns for p in glob.glob(str(root / "oml" / pattern))}
    current = weights.manifest().current_release("oml-default")
    assert {p.name for p in shipped if p.suffix == ".pt"} == {current.file} | ({_release(current.base).file} if current.base else set())
    assert sum(p.stat().st_size for p in shipped) <= 25_000_000
    listed = {(r.file, r.sha256, r.size) for r in weights.manifest().releases["oml-default"]}
    on_disk = {(p.name, hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_size) for p in [*root.glob("oml/weights/*.pt"), *REPOSITORY_WEIGHTS.glob("*.pt")]}
    assert on_disk == listed
    model = zoo.load_model("oml-default", 3)
    assert {v: model.fingerprint(3, v) for v in (1, 2)} == current.fingerprints


@pytest.mark.parametrize(
    "name,fingerprint,psnr_db",
    [
        ("v1-kodim05-crop.oml", "f353f8d6b7c3005d", 23.6413),
        ("v2-kodim05-crop.oml", "d25d9cc7393d9ea8", 23.9826),
        ("v3-kodim05-crop.oml", "14093feacbdb9c84", 23.9843),
        ("v4-kodim05-crop.oml", "fc3448da038432dd", 24.3412),
        ("v5-kodim05-crop.oml", "7228e1e4e758e483", 24.4879),
        ("v6-kodim05-crop.oml", "e0fd0727733917a5", 24.6302),
        ("v7-kodim05-crop.oml", "b43065c85c2409df", 24.8409),
        ("v8-kodim05-crop.oml", "3d6171f772d00c7a", 25.1305),
        ("v9-kodim05-crop.oml", "b9e439e989ad8e6a", 25.6781),
        ("v10-kodim05-crop.oml", "1ab62a9f3f7e6d4e", 25.6992),
    ],
)
def test_a_file_coded_with_earlier_shipped_weights_restores_with_them(tmp_path, name, fingerprint, psnr_db):
    """``tests/expected/vK-kodim05-crop.oml``: kodim05[100:260, 300:492], coded by the K-th shipped
    oml-default weights (v1: 28 000 steps; v2: 41 000 steps, qualities 1–6, a mean-scale
    hyperprior; v3: v2 plus a checkerboard context; v4: v3 trained jointly with its context for 14 000 more
    steps; v5: v4 trained 9 000 steps on 256² crops; v6: v5 trained 9 936 steps with --amp;
    v7: v6 trained 15 758 steps with --amp; v8: v7 trained 18 846 steps with --amp, the last N = 64
    model; v9: v8 widened to N = 128 and trained 9 383 steps on one GPU; v10: v9 with its λ-offset branches
    re-meta-trained, a 60 kB overlay over v9) at quality 3, 3 adaptation steps, 128² tiles, before the next version shipped.
    `oml decompress` with no flags must find that version among the packaged weights by the
    file's fingerprint and restore it as coded: every tile's symbol check passes and the PSNR is
    the one measured when it was coded (the float synthesis may move a pixel by one grey level
    elsewhere)."""
    from oml.imageio import decode_image
    from oml.metrics import psnr
    from pipeline.cli import main

    from ..conftest import kodak_image

    coded = Path(__file__).parents[1] / "expected" / name
    header = codec.read_header(coded.read_bytes())
    assert (header.fingerprint.hex(), header.quality, header.width, header.height) == (fingerprint, 3, 192, 160)
    assert main(["decompress", str(coded), "-o", str(tmp_path / "out.png")]) == 0
    restored = decode_image((tmp_path / "out.png").read_bytes()).float() / 255
    source = decode_image(kodak_image("kodim05.png").read_bytes())[:, 100:260, 300:492].float() / 255
    assert abs(float(psnr(restored, source)) - psnr_db) < 0.01


def test_weights_and_training_state_are_read_only_through_the_weights_module():
    """Every project file is read by oml.models.weights (``weights_only``: loading runs no code);
    a test may load a file it forges, with ``weights_only`` too."""
    import ast

    root = Path(__file__).resolve().parents[2]
    found = []
    for path in sorted(p for folder in ("oml", "pipeline", "jobs", "bench", "scripts", "tests") for p in (root / folder).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "load" and getattr(node.func.value, "id", "") == "torch":
                safe = any(k.arg == "weights_only" and getattr(k.value, "value", None) is True for k in node.keywords)
                found.append((path.relative_to(root).as_posix(), safe))
    assert [f for f in found if not f[0].startswith("tests/")] == [("oml/models/weights.py", True)]
    assert all(safe for _, safe in found)
