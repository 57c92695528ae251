"""Widening the default model (oml/models/widen.py, jobs/widen_weights.py): the wide copy computes
what the narrow one computes, codes the same image alike, and its added channels train."""

from __future__ import annotations

import pytest
import torch

from jobs import widen_weights
from oml import codec
from oml.models import zoo
from oml.models.checkerboard import CheckerboardContext
from oml.models.weights import read_stored
from oml.train import rd_loss
from pipeline.training.base import widen_default_weights
from tests.conftest import natural_image


@pytest.fixture(scope="module")
def narrow_file(tmp_path_factory):
    """A small trained-looking default model (random weights, a context, λ-offset branches) on file."""
    torch.manual_seed(3)
    model = zoo.untrained_default_model(16, 24)
    model.encoders["0"].context = CheckerboardContext(24)
    model.synthesis.add_offsets()
    with torch.no_grad():
        for name, p in model.named_parameters():  # move every tensor off its initial value
            if "modulators" in name or "offsets" in name or "context" in name or "rate_gain" in name:
                p.add_(0.05 * torch.randn_like(p))
        quantiles = model.encoders["0"].entropy_bottleneck.quantiles  # medians off zero, as trained ones are
        quantiles.add_(0.3 * torch.randn(quantiles.shape[0], 1, 1))
        for p in model.parameters():  # float16, as shipped files are (and as the wide copy is saved)
            p.copy_(p.half().float())
    path = tmp_path_factory.mktemp("narrow") / "narrow.pt"
    zoo.save_weights(model, path, torch.float16, trained_steps=1234)
    return path


@pytest.fixture(scope="module")
def wide_file(narrow_file, tmp_path_factory):
    return widen_default_weights(narrow_file, tmp_path_factory.mktemp("wide") / "wide.pt", N=28)


def _nets(narrow_file, wide_file):
    narrow = zoo.load_model("oml-default", 1, weights=narrow_file).encoders["0"].eval()
    wide = zoo.load_model("oml-default", 1, weights=wide_file).encoders["0"].eval()
    return narrow, wide


def test_the_wide_copy_computes_what_the_narrow_one_computes(narrow_file, wide_file):
    narrow, wide = _nets(narrow_file, wide_file)
    assert (narrow.N, wide.N, wide.M) == (16, 28, 24)
    x = natural_image(64, 64)[None].float() / 255
    with torch.no_grad():
        for lmbda in (0.0018, 0.0483):
            lm = torch.full((1,), lmbda)
            a, b = narrow(x, lm), wide(x, lm)
            assert torch.equal(narrow.g_a(x, lm), wide.g_a(x, lm))
            assert torch.allclose(a["x_hat"], b["x_hat"], atol=1e-6)
            assert torch.allclose(a["likelihoods"]["y"], b["likelihoods"]["y"], atol=1e-6)
            z = wide.h_a(wide.g_a(x, lm))
            assert torch.count_nonzero(z[:, narrow.N :]) == 0  # the hyper-latent's new channels start at zero


def test_the_wide_copy_codes_an_image_alike(narrow_file, wide_file):
    image = natural_image(80, 96)
    for quality in (1, 6):
        a = codec.encode(zoo.load_model("oml-default", quality, weights=narrow_file), image, quality=quality)
        b = codec.encode(zoo.load_model("oml-default", quality, weights=wide_file), image, quality=quality)
        assert torch.equal(a.reconstruction, b.reconstruction)
        restored = codec.decode(zoo.load_model("oml-default", quality, weights=wide_file), b.data)
        assert torch.equal(restored, b.reconstruction)


def test_the_wide_file_keeps_the_step_context_and_branches(narrow_file, wide_file):
    weights, step = zoo.default_training_weights(wide_file, 28, 24)
    assert step == 1234
    assert any(k.startswith("context.") for k in weights)
    branches = zoo.weights_under(wide_file, "synthesis.offsets.")
    narrow_branches = zoo.weights_under(narrow_file, "synthesis.offsets.")
    for key, value in narrow_branches.items():
        wide_value = branches[key]
        assert torch.equal(wide_value[tuple(slice(0, n) for n in value.shape)], value)


def test_the_added_channels_get_gradients(wide_file):
    net = zoo.load_model("oml-default", 1, weights=wide_file).encoders["0"]
    net.train()
    x = natural_image(64, 64)[None].float() / 255
    lm = torch.full((1,), 0.0130)
    out = net(x, lm)
    rd_loss(out["x_hat"], x, out["likelihoods"], lm).loss.backward()
    muted = net.g_s.blocks[1][0].weight  # ConvTranspose2d (in, out, k, k): new inputs → old outputs
    assert muted.grad[16:, :16].abs().sum() > 0
    silent = net.h_a[4].weight  # the hyper-latent's new outputs start at zero fan-in
    assert torch.count_nonzero(silent[16:]) == 0 and silent.grad[16:].abs().sum() > 0


def test_narrower_or_foreign_targets_are_one_line_errors(narrow_file, tmp_path, capsys):
    assert widen_weights.main([str(narrow_file), str(tmp_path / "w.pt"), "--N", "8"]) == 2
    assert "narrower" in capsys.readouterr().err
    assert widen_weights.main([str(tmp_path / "missing.pt"), str(tmp_path / "w.pt"), "--N", "32"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("widen_weights:") and err.count("\n") == 1
    assert not (tmp_path / "w.pt").exists()
    before = narrow_file.read_bytes()
    assert widen_weights.main([str(narrow_file), str(narrow_file), "--N", "32"]) == 2  # input = output
    assert "being widened" in capsys.readouterr().err and narrow_file.read_bytes() == before


def test_the_same_call_writes_the_same_weights(narrow_file, wide_file, tmp_path):
    again = widen_default_weights(narrow_file, tmp_path / "again.pt", N=28)
    other = widen_default_weights(narrow_file, tmp_path / "other.pt", N=28, seed=1)
    a, b, c = (read_stored(p)["state_dict"] for p in (wide_file, again, other))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)  # the seed draws the added channels
