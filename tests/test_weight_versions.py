"""Several shipped versions of one model's weights: a file decodes with the version that coded it,
found by its fingerprint, and a weights file carries the widths it was built with."""

from __future__ import annotations

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
