"""Latent refinement (oml.refine and its use in oml.codec): the files it writes decode with the
unchanged decoder, no tile's exact RD cost rises, and its loss measures what the coder pays."""

from __future__ import annotations

import pytest
import torch

from oml import codec, tiling
from oml.adapt import AdaptConfig
from oml.imageio import decode_image
from oml.models.zoo import load_model
from oml.refine import HARD, Objective, RefineConfig, distortion_weight, rd_cost, refine, soft_round
from pipeline import cli
from tests.conftest import kodak_image


@pytest.fixture(scope="module")
def shipped():
    return load_model("oml-default", 1)


@pytest.fixture(scope="module")
def crop():
    """A Kodak crop whose 128² tiling has full, narrow, short and corner tiles."""
    return decode_image(kodak_image("kodim23.png").read_bytes())[:, 100:292, 200:520].contiguous()


def _tile_costs(model, data: bytes, image: torch.Tensor) -> list[float]:
    """Per tile, the exact RD cost at λ_t: the coded strings' bits and the decoder's 8-bit output."""
    header, records = codec.read(data)
    lam_t = codec.plain_lambdas(header.num_lambdas, header.lmbda)
    costs = []
    for number, (tile, rec) in enumerate(zip(tiling.tile_grid(header.height, header.width, header.tile), records)):
        y_hat = codec.decode_tile_latent(model, header, rec, number, tile)
        recon = codec.reconstruct_tile(model, y_hat, lam_t, header.lmbda, tile).float().div(255).unsqueeze(0)
        x = tiling.split(image, [tile])[0].float().div(255).unsqueeze(0)
        bits = torch.tensor([8.0 * sum(map(len, rec.strings))])
        costs.append(float(rd_cost("psnr", torch.tensor([255.0**2]), header.lmbda, recon, x, bits)))
    return costs


@pytest.mark.parametrize("quality", [1, 4])
def test_refined_files_decode_unchanged_and_no_tile_cost_rises(shipped, crop, quality):
    plain = codec.encode(shipped, crop, quality=quality, tile_size=128)
    refined = codec.encode(shipped, crop, quality=quality, tile_size=128, refine_config=RefineConfig(30))
    assert torch.equal(codec.decode(shipped, refined.data), refined.reconstruction)
    before, after = _tile_costs(shipped, plain.data, crop), _tile_costs(shipped, refined.data, crop)
    assert len(before) == len(after) == 6
    assert all(a <= b + 1e-9 for a, b in zip(after, before)), (before, after)
    assert sum(after) < 0.99 * sum(before)  # and it does find something
    assert any(t.refined for t in refined.tiles)
    # a tile that kept its latent is byte-identical to the plain coding
    for t, p, r in zip(refined.tiles, codec.read(plain.data)[1], codec.read(refined.data)[1]):
        assert t.refined == (p.strings != r.strings)


def test_refinement_then_adaptation_for_ms_ssim(shipped, crop):
    enc = codec.encode(
        shipped, crop, quality=2, tile_size=128, adapt_config=AdaptConfig(2, ("ms-ssim", "psnr")), refine_config=RefineConfig(10)
    )
    header = codec.read_header(enc.data)
    assert header.metrics == ("ms-ssim", "psnr")
    for metric in header.metrics:
        codec.decode(shipped, enc.data, metric=metric)  # both λ* sets decode on the refined latents
    assert torch.equal(codec.decode(shipped, enc.data), enc.reconstruction)


def test_the_hard_loss_is_what_the_coder_pays(shipped, crop):
    """At the unrefined latent, the objective's surrogate-free loss is the real bits and distortion
    (up to the scale table's buckets, the coder's flush bytes and the 8-bit output); its rate
    alone (distortion weight 0) is the strings' bits: a wrong log base, pixel count or a missing
    z term (about 5 % of the bits) would be far off."""
    lmbda = shipped.lambdas[3]
    x = crop[:, :192, :256].float().div(255).unsqueeze(0)
    with torch.no_grad():
        y = shipped.analyze(x, 3, lmbda)
        full = Objective(shipped, 3, lmbda, x, "psnr", torch.tensor([255.0**2]))
        z = full.hyper(y)
        modelled = float(full.loss(y, z, HARD))
        rate = float(Objective(shipped, 3, lmbda, x, "psnr", torch.tensor([0.0])).loss(y, z, HARD))
    code = shipped.latent_codec(3).encode(y)
    recon = codec.reconstruct_tile(shipped, code.y_hat, codec.plain_lambdas(4, lmbda), lmbda, tiling.Tile(0, 0, 192, 256))
    bits = torch.tensor([8.0 * sum(map(len, code.strings))])
    exact = float(rd_cost("psnr", torch.tensor([255.0**2]), lmbda, recon.float().div(255).unsqueeze(0), x, bits))
    assert rate == pytest.approx(float(bits) / (192 * 256), rel=0.025)
    assert modelled == pytest.approx(exact, rel=0.015)


def test_search_lowers_the_hard_loss_and_returns_the_best_point(shipped, crop):
    lmbda = shipped.lambdas[1]
    x = torch.stack([crop[:, :64, :64], crop[:, 64:128, 64:128]]).float().div(255)
    with torch.no_grad():
        y = shipped.analyze(x, 1, lmbda)
    y_ref, z_ref, trace = refine(shipped, 1, lmbda, x, y, RefineConfig(40, check_every=4))
    assert trace.losses.shape == (11, 2) and trace.iterations[-1] == 40
    best = trace.losses.min(0).values
    assert (best < trace.losses[0]).all() and float((best / trace.losses[0]).mean()) < 0.99
    objective = Objective(shipped, 1, lmbda, x, "psnr", torch.full((2,), 255.0**2))
    with torch.no_grad():
        assert torch.allclose(objective.loss(y_ref, z_ref, HARD), best, rtol=1e-5)
    assert all(p.requires_grad for p in shipped.parameters())  # the model is left as it was


@pytest.mark.parametrize("surrogate", ["ste", "noise"])
def test_other_surrogates_never_return_a_worse_point(shipped, crop, surrogate):
    lmbda = shipped.lambdas[2]
    x = crop[:, :64, :64].float().div(255).unsqueeze(0)
    with torch.no_grad():
        y = shipped.analyze(x, 2, lmbda)
    _, _, trace = refine(shipped, 2, lmbda, x, y, RefineConfig(10, surrogate=surrogate, check_every=2))
    assert float(trace.losses.min()) <= float(trace.losses[0])
    assert trace.best_iteration[0] == int(trace.iterations[int(trace.losses[:, 0].argmin())])


def test_soft_round_anneals_to_rounding():
    v = torch.linspace(-3.2, 3.2, 1001)
    v = v[((v - torch.floor(v)) - 0.5).abs() > 0.05]  # at a half the two roundings stay a coin toss
    cold = soft_round(v, 1e-3, torch.Generator().manual_seed(0))
    assert torch.allclose(cold, torch.round(v), atol=1e-3)
    warm = soft_round(v, 1.0, torch.Generator().manual_seed(0))
    assert ((warm >= torch.floor(v) - 1e-6) & (warm <= torch.ceil(v) + 1e-6)).all()
    assert (warm - torch.round(v)).abs().max() > 0.3  # warm samples are still far from rounding


def test_ms_ssim_weight_matches_mse_at_the_start():
    g = torch.Generator().manual_seed(1)
    x = torch.rand(2, 3, 192, 192, generator=g)
    x_hat = (x + 0.05 * torch.randn(x.shape, generator=g)).clamp(0, 1)
    from oml.adapt import distortion

    w = distortion_weight("ms-ssim", x_hat, x)
    assert torch.allclose(w * distortion("ms-ssim", x_hat, x), 255.0**2 * distortion("psnr", x_hat, x))
    assert torch.equal(distortion_weight("psnr", x_hat, x), torch.full((2,), 255.0**2))


@pytest.mark.parametrize("name", ["bmshj2018-hyperprior", "mbt2018"])
def test_refinement_codes_every_latent_kind(name):
    torch.manual_seed(0)
    model = load_model(name, 1, pretrained=False)
    model.update_entropy_models()
    from tests.conftest import natural_image

    image = natural_image(64, 96)
    enc = codec.encode(model, image, quality=1, refine_config=RefineConfig(5, check_every=1))
    assert torch.equal(codec.decode(model, enc.data), enc.reconstruction)


def test_bad_settings_are_refused(tmp_path, capsys):
    with pytest.raises(ValueError, match="surrogate"):
        RefineConfig(5, surrogate="gumbel")
    with pytest.raises(ValueError, match=">= 0"):
        RefineConfig(-1)
    assert cli.main(["compress", str(kodak_image("kodim23.png")), "-o", str(tmp_path / "a.oml"), "--refine", "-2"]) == 2
    assert "--refine must be 0 or more" in capsys.readouterr().err
    assert not (tmp_path / "a.oml").exists()
