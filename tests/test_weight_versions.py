"""Several shipped versions of one model's weights: a file decodes with the version that coded it,
found by its fingerprint, and a weights file carries the widths it was built with."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from oml import codec
from oml.models import zoo
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
    state = torch.load(new, weights_only=True)
    state["config"] = {"N": 32, "M": 10**6}
    torch.save(state, tmp_path / "forged.pt")
    with pytest.raises(ModelUnavailableError, match="architecture"):
        zoo.load_model("oml-default", 1, weights=tmp_path / "forged.pt")


def test_packaged_versions_are_listed_newest_first(tmp_path, monkeypatch):
    for name in ("oml-default.pt", "oml-default-v1.pt", "oml-default-v10.pt", "oml-default-v2.pt", "oml-default-vx.pt", "other.pt"):
        (tmp_path / name).write_bytes(b"")
    monkeypatch.setattr(zoo, "_weights_folder", lambda: tmp_path)
    assert [p.name for p in zoo.packaged_weights("oml-default")] == ["oml-default.pt", "oml-default-v10.pt", "oml-default-v2.pt", "oml-default-v1.pt"]


def test_oml_decompress_picks_the_packaged_version_a_file_names(versions, tmp_path, monkeypatch):
    """Files coded with the current and with an earlier shipped version restore through the CLI,
    with no --weights; a file of weights that were never shipped is a one-line error."""
    from oml.imageio import decode_image
    from pipeline import cli

    old, new = versions
    image = natural_image(64, 96)
    monkeypatch.setattr(zoo, "_weights_folder", lambda: old.parent)
    stray = tmp_path / "stray.pt"
    zoo.save_weights(_random(7), stray)
    for path in (old, new, stray):
        enc = codec.encode(zoo.load_model("oml-default", 3, weights=path), image, quality=3)
        coded = tmp_path / f"{path.stem}.oml"
        coded.write_bytes(enc.data)
        status = cli.main(["decompress", str(coded), "-o", str(tmp_path / f"{path.stem}.png")])
        if path is stray:
            assert status == 1 and not (tmp_path / "stray.png").exists()
        else:
            assert status == 0
            assert torch.equal(decode_image((tmp_path / f"{path.stem}.png").read_bytes()), enc.reconstruction)


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
    ],
)
def test_a_file_coded_with_earlier_shipped_weights_restores_with_them(tmp_path, name, fingerprint, psnr_db):
    """``tests/expected/vK-kodim05-crop.oml``: kodim05[100:260, 300:492], coded by the K-th shipped
    oml-default weights (v1: 28 000 steps; v2: 41 000 steps, qualities 1–6, a mean-scale
    hyperprior; v3: v2 plus a checkerboard context; v4: v3 trained jointly with its context for 14 000 more
    steps; v5: v4 trained 9 000 steps on 256² crops; v6: v5 trained 9 936 steps with --amp;
    v7: v6 trained 15 758 steps with --amp; v8: v7 trained 18 846 steps with --amp, the last N = 64
    model; v9: v8 widened to N = 128 and trained 9 383 steps on one GPU) at quality 3, 3 adaptation steps, 128² tiles, before the next version shipped.
    `oml decompress` with no flags must find that version among the packaged weights by the
    file's fingerprint and restore it as coded: every tile's symbol check passes and the PSNR is
    the one measured when it was coded (the float synthesis may move a pixel by one grey level
    elsewhere)."""
    from oml.imageio import decode_image
    from oml.metrics import psnr
    from pipeline.cli import main

    from .conftest import kodak_image

    coded = Path(__file__).parent / "expected" / name
    header = codec.read_header(coded.read_bytes())
    assert (header.fingerprint.hex(), header.quality, header.width, header.height) == (fingerprint, 3, 192, 160)
    assert main(["decompress", str(coded), "-o", str(tmp_path / "out.png")]) == 0
    restored = decode_image((tmp_path / "out.png").read_bytes()).float() / 255
    source = decode_image(kodak_image("kodim05.png").read_bytes())[:, 100:260, 300:492].float() / 255
    assert abs(float(psnr(restored, source)) - psnr_db) < 0.01
