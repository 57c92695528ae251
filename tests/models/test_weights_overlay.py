"""Weights overlays: a file holding only the tensors that differ from a whole weights file beside
it (re-trained λ-offset branches), loaded as the whole model by every reader."""

from __future__ import annotations

import hashlib
import shutil

import pytest
import torch

from oml import codec
from oml.adapt import AdaptConfig
from oml.models import weights, zoo
from oml.names import ModelUnavailableError
from tests.conftest import natural_image


def _with_branches(seed: int):
    torch.manual_seed(0)  # the same base for every seed
    model = zoo.untrained_default_model(16, 24)
    model.synthesis.add_offsets()
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.synthesis.offsets.parameters():
            p.add_(0.3 * torch.randn_like(p))
    model.update_entropy_models()
    return model.eval()


@pytest.fixture()
def files(tmp_path):
    """A base file, a whole file whose branches differ from it, and the overlay of the two."""
    base, whole, overlay = tmp_path / "oml-default-v1.pt", tmp_path / "whole.pt", tmp_path / "oml-default.pt"
    zoo.save_weights(_with_branches(1), base, trained_steps=40)
    zoo.save_weights(_with_branches(2), whole, trained_steps=40)
    stored = zoo.save_overlay(whole, base, overlay)
    return base, whole, overlay, stored


def test_overlay_stores_only_the_branches_and_loads_as_the_whole_file(files):
    base, whole, overlay, stored = files
    assert stored and all(".offsets." in k for k in stored)
    assert overlay.stat().st_size * 20 < whole.stat().st_size
    a = zoo.load_model("oml-default", 3, weights=whole)
    b = zoo.load_model("oml-default", 3, weights=overlay)
    assert a.fingerprint(3) == b.fingerprint(3) != zoo.load_model("oml-default", 3, weights=base).fingerprint(3)
    image = natural_image(64, 96)
    lambdas = torch.tensor([[0.004, 0.006, 0.003, 0.009]])  # away from λ_t, where the branches act
    assert codec.encode(a, image, quality=3, adapt_config=AdaptConfig(2)).data == codec.encode(b, image, quality=3, adapt_config=AdaptConfig(2)).data
    y = torch.randn(1, a.latent_channels, 4, 6)
    with torch.no_grad():
        assert torch.equal(a.synthesize(y, lambdas, 0.0067), b.synthesize(y, lambdas, 0.0067))
    # readers of the training state see the whole file too
    weights, steps = zoo.default_training_weights(overlay, 16, 24)
    reference, _ = zoo.default_training_weights(whole, 16, 24)
    assert steps == 40 and weights.keys() == reference.keys()
    assert all(torch.equal(weights[k], reference[k]) for k in weights)


def test_base_is_found_by_digest_not_by_name(files, tmp_path):
    base, whole, overlay, _ = files
    base.rename(tmp_path / "renamed.pt")
    assert zoo.load_model("oml-default", 1, weights=overlay).fingerprint(1) == zoo.load_model("oml-default", 1, weights=whole).fingerprint(1)


def test_missing_or_changed_base_is_a_clear_error(files, tmp_path):
    base, whole, overlay, _ = files
    whole.unlink()
    moved = tmp_path / "elsewhere"
    moved.mkdir()
    shutil.move(base, moved / base.name)
    with pytest.raises(ModelUnavailableError, match="oml-default-v1.pt.*put that weights file beside it"):
        zoo.load_model("oml-default", 1, weights=overlay)
    # a file of the base's name with other bytes is not the base
    zoo.save_weights(_with_branches(3), base)
    with pytest.raises(ModelUnavailableError, match="not in"):
        zoo.load_model("oml-default", 1, weights=overlay)


def test_forged_overlays_are_refused(files, tmp_path):
    base, whole, overlay, _ = files
    state = weights.read_stored(overlay)
    # a base name that climbs out of the folder is never opened
    outside = tmp_path.parent / f"{tmp_path.name}-outside.pt"
    shutil.copy(base, outside)
    base.unlink()
    whole.unlink()
    escaped = dict(state, base={"name": f"../{outside.name}", "sha256": state["base"]["sha256"]})
    torch.save(escaped, overlay)
    try:
        with pytest.raises(ModelUnavailableError, match="not in"):
            zoo.load_model("oml-default", 1, weights=overlay)
    finally:
        outside.unlink()
    torch.save(dict(state, base={"name": "x.pt", "sha256": "zz"}), overlay)
    with pytest.raises(ModelUnavailableError, match="damaged"):
        zoo.load_model("oml-default", 1, weights=overlay)
    torch.save(dict(state, base="x"), overlay)
    with pytest.raises(ModelUnavailableError, match="damaged"):
        zoo.load_model("oml-default", 1, weights=overlay)


def test_overlay_of_an_overlay_and_mismatched_architectures_are_refused(files, tmp_path):
    base, whole, overlay, _ = files
    with pytest.raises(ValueError, match="two whole weights files"):
        zoo.save_overlay(whole, overlay, tmp_path / "second.pt")
    # a hand-made overlay whose base is itself an overlay
    state = weights.read_stored(overlay)
    second = tmp_path / "second.pt"
    torch.save(dict(state, base={"name": overlay.name, "sha256": hashlib.sha256(overlay.read_bytes()).hexdigest()}), second)
    with pytest.raises(ModelUnavailableError, match="one level only"):
        zoo.load_model("oml-default", 1, weights=second)
    other = tmp_path / "narrow.pt"
    zoo.save_weights(zoo.untrained_default_model(16, 32), other)
    with pytest.raises(ValueError, match="not the same architecture"):
        zoo.save_overlay(other, base, tmp_path / "x.pt")


def test_overlay_command(files, tmp_path, capsys):
    from jobs import overlay_weights

    base, whole, overlay, _ = files
    out = tmp_path / "again.pt"
    assert overlay_weights.main([str(whole), str(base), str(out)]) == 0
    assert "tensors differ from oml-default-v1.pt" in capsys.readouterr().out
    assert zoo.load_model("oml-default", 2, weights=out).fingerprint(2) == zoo.load_model("oml-default", 2, weights=whole).fingerprint(2)
    elsewhere = tmp_path / "sub"
    elsewhere.mkdir()
    for args in ([whole, base, base], [whole, base, elsewhere / "x.pt"], [tmp_path / "none.pt", base, tmp_path / "y.pt"]):
        assert overlay_weights.main([str(a) for a in args]) == 2
        err = capsys.readouterr().err
        assert err.startswith("overlay_weights: ") and err.count("\n") == 1
    assert not (elsewhere / "x.pt").exists() and not (tmp_path / "y.pt").exists()


def test_an_overlay_of_a_release_finds_its_base_on_the_weights_path(tmp_path, monkeypatch):
    """An overlay over a released file (here v1, in the checkout's weights/) loads away from it:
    the manifest names the release of the base's SHA-256 and the weights path holds its file."""
    monkeypatch.delenv(weights.PATH_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    v1 = weights.find_release(weights.manifest().release("oml-default", "v1"))
    assert v1 is not None and v1.parent != tmp_path
    model = zoo.load_model("oml-default", 2, weights=v1)
    with torch.no_grad():
        for p in model.synthesis.offsets.parameters():
            p.mul_(0.5)
    whole, overlay = tmp_path / "whole.pt", tmp_path / "overlay.pt"
    zoo.save_weights(model, whole, torch.float16)
    assert all(".offsets." in k for k in zoo.save_overlay(whole, v1, overlay))
    expected = zoo.load_model("oml-default", 2, weights=whole).fingerprint(2)
    whole.unlink()
    assert zoo.load_model("oml-default", 2, weights=overlay).fingerprint(2) == expected != zoo.load_model("oml-default", 2, weights=v1).fingerprint(2)
    monkeypatch.setenv(weights.NO_CHECKOUT_ENV, "1")  # the base is on no folder of the path now
    with pytest.raises(ModelUnavailableError, match="oml-default-v1.pt.*not in"):
        zoo.load_model("oml-default", 2, weights=overlay)
