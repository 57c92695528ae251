"""Byte format and coding invariants of oml.codec."""

import struct
import zlib

import pytest
import torch

from oml import codec
from oml.adapt import AdaptConfig
from oml.models.zoo import load_model

from ..conftest import natural_image


@pytest.fixture(scope="module")
def coded(random_default_model):
    image = natural_image(600, 700)  # four tiles, three of them boundary tiles
    return image, codec.encode(random_default_model, image, quality=2)


def test_decode_equals_encoder_reconstruction_bit_for_bit(random_default_model, coded):
    image, enc = coded
    assert torch.equal(codec.decode(random_default_model, enc.data), enc.reconstruction)
    assert enc.reconstruction.dtype == torch.uint8 and enc.reconstruction.shape == image.shape


def test_header_describes_the_image(random_default_model, coded):
    image, enc = coded
    h = codec.read_header(enc.data)
    assert (h.height, h.width, h.tile, h.num_tiles) == (600, 700, 512, 4)
    assert (h.model, h.quality, h.num_lambdas, h.metrics) == ("oml-default", 2, 4, ("plain",))
    assert h.fingerprint == random_default_model.fingerprint(2)
    assert abs(h.lmbda - 0.0035) < 1e-7
    _, tiles = codec.read(enc.data)
    assert all(torch.equal(t.lambdas, torch.full((1, 4), h.lmbda).half()) for t in tiles)


def test_bytes_account_for_every_tile(coded):
    _, enc = coded
    assert sum(t.num_bytes for t in enc.tiles) < len(enc.data)
    assert len(enc.tiles) == 4


def test_continuous_lambda_round_trip(random_default_model):
    image = natural_image(70, 90)
    enc = codec.encode(random_default_model, image, lmbda=0.005)
    assert codec.read_header(enc.data).quality == 0
    assert torch.equal(codec.decode(random_default_model, enc.data), enc.reconstruction)


def test_tiny_images(random_default_model):
    for h, w in [(1, 1), (5, 63), (64, 3)]:
        image = natural_image(h, w)
        enc = codec.encode(random_default_model, image, quality=1)
        assert torch.equal(codec.decode(random_default_model, enc.data), enc.reconstruction)
        assert enc.reconstruction.shape == (3, h, w)


def _recrc(body: bytes) -> bytes:
    return body + struct.pack("<I", zlib.crc32(body))


def test_damaged_bytes_are_refused(random_default_model, coded):
    _, enc = coded
    data = bytearray(enc.data)
    data[len(data) // 2] ^= 0x40
    with pytest.raises(codec.CodecError, match="checksum"):
        codec.decode(random_default_model, bytes(data))
    with pytest.raises(codec.CodecError, match="ends early|checksum"):
        codec.decode(random_default_model, enc.data[:-100])
    with pytest.raises(codec.CodecError, match="magic"):
        codec.decode(random_default_model, b"GIF89a" + enc.data)
    with pytest.raises(codec.CodecError, match="magic"):
        codec.read_header(b"")


def test_other_format_version_is_refused(random_default_model, coded):
    _, enc = coded
    body = bytearray(enc.data[:-4])
    body[4] = 99
    with pytest.raises(codec.CodecError, match="version 99 is not supported"):
        codec.decode(random_default_model, _recrc(bytes(body)))


def test_other_weights_are_refused(random_default_model, coded):
    _, enc = coded
    torch.manual_seed(123)
    other = load_model("oml-default", pretrained=False)
    with pytest.raises(codec.CodecError, match="other weights"):
        codec.decode(other, enc.data)


def test_other_model_is_refused(coded):
    _, enc = coded
    torch.manual_seed(0)
    other = load_model("mbt2018-mean", 1, pretrained=False)
    with pytest.raises(codec.CodecError, match="coded with model 'oml-default'"):
        codec.decode(other, enc.data)


def test_trailing_garbage_is_refused(random_default_model, coded):
    _, enc = coded
    with pytest.raises(codec.CodecError, match="trailing"):
        codec.read(_recrc(enc.data[:-4] + b"xx"))


def test_bad_arguments(random_default_model):
    image = natural_image(8, 8)
    with pytest.raises(ValueError, match="exactly one"):
        codec.encode(random_default_model, image)
    with pytest.raises(ValueError, match="qualities"):
        codec.encode(random_default_model, image, quality=9)
    with pytest.raises(ValueError, match="uint8 RGB"):
        codec.encode(random_default_model, image.float(), quality=1)
    with pytest.raises(ValueError, match="metrics"):
        AdaptConfig(steps=2, metrics=("lpips",))


def test_adapted_sets_and_metric_choice(random_default_model):
    image = natural_image(96, 160)
    cfg = AdaptConfig(steps=4, metrics=("psnr", "ms-ssim"))
    enc = codec.encode(random_default_model, image, quality=1, adapt_config=cfg)
    header, tiles = codec.read(enc.data)
    assert header.metrics == ("psnr", "ms-ssim")
    assert tiles[0].lambdas.shape == (2, 4)
    assert torch.equal(codec.decode(random_default_model, enc.data, metric="psnr"), enc.reconstruction)
    by_msssim = codec.decode(random_default_model, enc.data, metric="ms-ssim")
    assert not torch.equal(tiles[0].lambdas[0], tiles[0].lambdas[1])  # so choosing the set matters
    from oml import tiling

    y_hat, _ = random_default_model.decode_latent(tiles[0].strings, tiles[0].z_shape, header.quality)
    [tile] = tiling.tile_grid(96, 160)
    assert torch.equal(by_msssim, codec.reconstruct_tile(random_default_model, y_hat, tiles[0].lambdas[1], header.lmbda, tile))
    plain = codec.encode(random_default_model, image, quality=1)  # λ* = λ_t: what 'plain' must give
    assert torch.equal(codec.decode(random_default_model, enc.data, metric="plain"), plain.reconstruction)
    with pytest.raises(codec.CodecError, match="no λ\\* set for 'psnr'"):
        codec.decode(random_default_model, plain.data, metric="psnr")
    for t in enc.tiles:
        assert t.psnr_after >= t.psnr_before


def test_batched_tiles_keep_every_invariant(random_default_model):
    image = natural_image(300, 330, seed=4)  # 128-px tiles: 4 full, 3+3 boundary, 1 corner
    enc = codec.encode(random_default_model, image, quality=1, adapt_config=AdaptConfig(steps=3), tile_size=128, tile_batch=9)
    assert len(enc.tiles) == 9
    assert torch.equal(codec.decode(random_default_model, enc.data), enc.reconstruction)
    assert all(t.psnr_after >= t.psnr_before for t in enc.tiles)


@pytest.mark.parametrize(
    "change,message",
    [
        (dict(height=10**9, width=10**9), "tiles for a|cannot fit"),
        (dict(height=0), "image size"),
        (dict(tile=65472), "tile size"),
        (dict(tile=100), "tile size"),
        (dict(metrics=()), "λ\\* sets"),
        (dict(metrics=("psnr", "psnr")), "λ\\* sets"),
        (dict(num_lambdas=0), "K=0"),
    ],
)
def test_forged_headers_with_valid_checksums_are_refused_before_allocation(coded, change, message):
    """Header fields are bounded before anything is sized from them: a forged header costs no
    more than its own bytes (a 10⁹×10⁹ image is refused, not allocated)."""
    _, enc = coded
    header, records = codec.read(enc.data)
    forged = codec.write(header.__class__(**{**header.__dict__, **change}), records)
    with pytest.raises(codec.CodecError, match=message):
        codec.read(forged)


def test_forged_tile_shapes_are_refused(coded):
    _, enc = coded
    header, records = codec.read(enc.data)
    for z_shape in ((0, 0), (60000, 60000), (records[0].z_shape[0] + 1, records[0].z_shape[1])):
        bad = [records[0]._replace(z_shape=z_shape), *records[1:]]
        with pytest.raises(codec.CodecError, match="tile 0 has z shape"):
            codec.read(codec.write(header, bad))
    with pytest.raises(codec.CodecError, match="strings"):
        codec.read(codec.write(header, [records[0]._replace(strings=records[0].strings[:1]), *records[1:]]))


@pytest.mark.parametrize("value", [float("nan"), float("inf"), 0.0, -0.0035, 5e-5, 2.0])
def test_forged_lambdas_with_valid_checksums_are_refused(random_default_model, coded, value):
    """λ* the encoder cannot write (it keeps λ in [1e-4, 1]) are refused when read: NaN, ±inf,
    0 or a negative λ would reach log λ in the modulators and decode differently across CPUs."""
    _, enc = coded
    header, records = codec.read(enc.data)
    lambdas = records[1].lambdas.clone()
    lambdas[0, 2] = value
    forged = codec.write(header, [records[0], records[1]._replace(lambdas=lambdas), *records[2:]])
    with pytest.raises(codec.CodecError, match="tile 1 stores λ"):
        codec.decode(random_default_model, forged)
    edge = records[1].lambdas.clone()
    edge[0] = torch.tensor([1e-4, 1.0, 1e-4, 1.0]).half()  # the range's own ends are readable
    codec.read(codec.write(header, [records[0], records[1]._replace(lambdas=edge), *records[2:]]))


def test_a_decoder_output_that_is_not_finite_is_an_error(random_default_model, coded):
    """Casting NaN to uint8 is not defined the same on every CPU: a tile whose decoder output is not
    finite is a CodecError, never pixels."""
    import copy

    _, enc = coded
    header, records = codec.read(enc.data)
    model = copy.deepcopy(random_default_model)
    tile = codec.tiling.tile_grid(header.height, header.width, header.tile)[0]
    y_hat = codec.decode_tile_latent(model, header, records[0], 0, tile)
    lam = codec.plain_lambdas(header.num_lambdas, header.lmbda)
    codec.reconstruct_tile(model, y_hat, lam, header.lmbda, tile)
    with torch.no_grad():
        next(p for p in reversed(list(model.synthesis.parameters())) if p.dim() == 1).fill_(float("inf"))
    with pytest.raises(codec.CodecError, match="not finite"):
        codec.reconstruct_tile(model, y_hat, lam, header.lmbda, tile)


def test_decoding_is_bounded_by_max_pixels(random_default_model, coded):
    image, enc = coded
    with pytest.raises(codec.CodecError, match="over the limit"):
        codec.decode(random_default_model, enc.data, max_pixels=image.shape[1] * image.shape[2] - 1)


def test_tile_sizes_the_format_cannot_hold_are_refused_at_encoding(random_default_model):
    with pytest.raises(ValueError, match="tile size 70016"):
        codec.encode(random_default_model, natural_image(64, 64), quality=1, tile_size=70016)


def test_every_tile_resembles_its_source_with_the_shipped_weights():
    """Decoder = encoder is not enough: each tile, boundary tiles included (188 and 88 px sides
    here), must be close to its source. A crop from the wrong corner of the padded output keeps
    decoder = encoder but drops such tiles far below this floor."""
    from oml import tiling
    from oml.metrics import psnr

    model = load_model("oml-default", 3)
    image = natural_image(600, 700, seed=1)  # noisy on purpose: about 25–27 dB at quality 3
    enc = codec.encode(model, image, quality=3, tile_size=256)
    grid = tiling.tile_grid(600, 700, 256)
    assert {(t.height, t.width) for t in grid} == {(256, 256), (256, 188), (88, 256), (88, 188)}
    for tile, got, source in zip(grid, tiling.split(codec.decode(model, enc.data), grid), tiling.split(image, grid)):
        assert float(psnr(got, source)) > 23.5, tile
