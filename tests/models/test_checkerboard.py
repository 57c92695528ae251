"""The checkerboard context (default model v3): exact two-pass coding, the identity start, the
weights file that carries it, and its training job."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from ..conftest import kodak_image, natural_image
from oml import codec
from oml.imageio import decode_image, encode_png
from oml.models import zoo
from oml.models.checkerboard import CheckerboardContext, anchor_mask
from oml.models.latent import CheckerboardCodec, MeanScaleCodec
from oml.models.weights import load_weights


@pytest.fixture(scope="module")
def base():
    """The shipped default model without a context (v2's weights are what v3 builds on)."""
    path = next(p for p in zoo.packaged_weights() if not load_weights(p).architecture.context)
    return zoo.load_model("oml-default", 1, weights=path)


@pytest.fixture(scope="module")
def tile():
    return decode_image(kodak_image("kodim23.png").read_bytes())[:, 64:320, 128:448].float().div(255).unsqueeze(0)


def _with_context(model, seed: int | None):
    """A copy of ``model`` whose encoder has a checkerboard context: the identity start (seed None)
    or a random, non-zero refinement."""
    import copy

    model = copy.deepcopy(model)
    net = model.encoders["0"]
    net.context = CheckerboardContext(net.M)
    if seed is not None:
        torch.manual_seed(seed)
        with torch.no_grad():
            nn.init.normal_(net.context.entropy_parameters[-1].weight, std=0.02)
            nn.init.normal_(net.context.entropy_parameters[-1].bias, std=0.05)
    model.kind = "checkerboard"
    model.update_entropy_models(force=False)
    return model.eval()


def test_anchor_mask_is_a_checkerboard_and_the_context_sees_only_anchors():
    mask = anchor_mask(3, 4)[0, 0]
    assert mask.tolist() == [[1, 0, 1, 0], [0, 1, 0, 1], [1, 0, 1, 0]]
    conv = CheckerboardContext(8).context_prediction
    rest = 1 - anchor_mask(9, 9)
    x = torch.randn(1, 8, 9, 9)
    # at the positions coded second, the context depends on the anchors alone
    assert torch.allclose(conv(x) * rest, conv(x * (1 - rest)) * rest, atol=1e-6)
    assert not torch.allclose(conv(x) * rest, conv(torch.zeros_like(x)) * rest, atol=1e-3)


def test_an_untrained_context_codes_what_the_hyperprior_codes(base, tile):
    """The last layer starts at zero: same ŷ and symbols as the mean-scale codec (another order)."""
    model = _with_context(base, None)
    y = model.analyze(tile, 3, model.lambdas[3])
    cb = CheckerboardCodec(model.encoders["0"]).encode(y)
    ms = MeanScaleCodec(model.encoders["0"]).encode(y)
    assert torch.equal(cb.y_hat, ms.y_hat)
    assert abs(len(cb.strings[0]) - len(ms.strings[0])) <= 8


def test_a_context_codes_exactly_and_changes_the_latent(base, tile):
    model = _with_context(base, 0)
    coder = model.latent_codec(3)
    assert isinstance(coder, CheckerboardCodec)
    y = model.analyze(tile, 3, model.lambdas[3])
    code = coder.encode(y)
    y_hat, check = coder.decode(code.strings, code.z_shape)
    assert torch.equal(y_hat, code.y_hat) and check == code.check
    plain = MeanScaleCodec(model.encoders["0"]).encode(y)
    anchors = anchor_mask(*y.shape[2:]).bool().expand_as(y)
    assert not torch.equal(code.y_hat[~anchors], plain.y_hat[~anchors])  # the rest moved with its context
    # a stream cut short cannot decode into a silently wrong latent
    cut = [code.strings[0][: len(code.strings[0]) // 2], code.strings[1]]
    _, bad = coder.decode(cut, code.z_shape)
    assert bad != code.check


def test_the_weights_file_carries_the_context_and_keeps_the_base(base, tmp_path):
    model = _with_context(base, 0)
    zoo.save_weights(model, tmp_path / "v3.pt", dtype=torch.float16)
    loaded = zoo.load_model("oml-default", 2, weights=tmp_path / "v3.pt")
    assert loaded.kind == "checkerboard"
    assert loaded.fingerprint(2) != base.fingerprint(2)
    kept = {k: v for k, v in base.state_dict().items() if not k.startswith("encoders.0.context.")}
    got = loaded.state_dict()
    assert all(torch.equal(got[k].float(), v.float()) for k, v in kept.items() if v.is_floating_point())
    image = natural_image(96, 160)
    enc = codec.encode(loaded, image, quality=2)
    assert torch.equal(codec.decode(zoo.load_model("oml-default", 2, weights=tmp_path / "v3.pt"), enc.data), enc.reconstruction)


def test_training_the_context_lowers_the_rate_and_keeps_everything_else(base, tmp_path):
    from pipeline.training.context import ContextTrainConfig, run_context_training

    photos = tmp_path / "photos"
    photos.mkdir()
    for i, name in enumerate(("kodim01.png", "kodim13.png", "kodim21.png")):  # a unit test: any photos do
        img = decode_image(kodak_image(name).read_bytes())[:, :256, :384]
        (photos / f"{i}.png").write_bytes(encode_png(img))
    zoo.save_weights(base, tmp_path / "v2.pt", dtype=torch.float16)
    out = tmp_path / "out"
    cfg = ContextTrainConfig(str(photos), str(out), weights=str(tmp_path / "v2.pt"), steps=60, batch=4, crop=128,
                             crops_per_image=4, lr=3e-3, holdout_every=0, threads=2, log_every=20)
    summary = run_context_training(cfg)
    rows = [json.loads(line) for line in (out / "context_log.jsonl").read_text().splitlines()]
    assert rows[0]["event"] == "start" and [r["step"] for r in rows[1:]] == [20, 40, 60]
    assert rows[-1]["bpp_y"] < rows[-1]["bpp_y_hyperprior"]
    trained = zoo.load_model("oml-default", 1, weights=summary["weights"])
    assert trained.kind == "checkerboard"
    before = zoo.load_model("oml-default", 1, weights=tmp_path / "v2.pt").state_dict()
    after = trained.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items())
    with pytest.raises(ValueError, match="already hold"):
        run_context_training(ContextTrainConfig(str(photos), str(tmp_path / "again"), weights=summary["weights"], steps=1))


def test_the_exact_codec_codes_what_the_float_model_trains_on(base, tile):
    """The integer networks follow the float ones: ŷ of the codec and of the training pass agree
    but for the few values that sit on a rounding boundary, and so do the bits."""
    from oml.meta import latent_and_bits

    model = _with_context(base, 0)
    net = model.encoders["0"]
    y = model.analyze(tile, 3, model.lambdas[3])
    code = model.latent_codec(3).encode(y)
    with torch.no_grad():
        y_hat, bits = latent_and_bits("checkerboard", net, y)
    diff = (y_hat - code.y_hat).abs()
    assert float(diff.gt(0.5).float().mean()) < 1e-3  # symbols that rounded the other way
    assert float(diff[diff < 0.5].max()) < 0.01  # μ: the fixed-point networks' rounding
    assert float(bits) == pytest.approx(8 * sum(map(len, code.strings)), rel=0.03)
