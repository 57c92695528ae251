"""Input depth and colour: samples deeper than 8 bits are reduced by the depth and sample format
the FILE DECLARES (never by the values it holds), and a colour profile is never dropped without a
word (an RGB profile travels with the pixels, coded as stored; --to-srgb converts to sRGB instead). Every
input is a real file the test writes, as a camera, a scanner or an editor would."""

from __future__ import annotations

import io
import json
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image, ImageCms

from oml.imageio import ImageDecodeError, decode, decode_image, read_header
from pipeline.cli import main

from ..conftest import natural_image

RNG = np.random.default_rng(35)
REDUCED = "16-bit source reduced to 8 bits"


def r257(v: np.ndarray) -> np.ndarray:
    """round(v / 257) in exact integers (v / 257 never falls on a tie: 2v is even, 257 odd)."""
    return ((2 * v.astype(np.int64) + 257) // 514).astype(np.uint8)


def hwc(pixels: torch.Tensor) -> np.ndarray:
    return pixels.permute(1, 2, 0).numpy()


def grey3(plane: np.ndarray) -> np.ndarray:
    return np.repeat(plane[..., None], 3, axis=2)


# --------------------------------------------------------------------------- files


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png16(samples: np.ndarray, chunks: bytes = b"") -> bytes:
    """A PNG of bit depth 16 holding uint16 ``samples``: (H, W) grey, (H, W, 2) grey and alpha,
    (H, W, 3) RGB or (H, W, 4) RGBA. Every row uses the Sub filter, so a decoder that took the
    wrong number of bytes per pixel would smear the rows."""
    h, w = samples.shape[:2]
    channels = 1 if samples.ndim == 2 else samples.shape[2]
    rows = samples.reshape(h, w * channels).astype(">u2").view(np.uint8).reshape(h, -1)
    bpp = 2 * channels
    sub = rows.copy()
    sub[:, bpp:] = rows[:, bpp:] - rows[:, :-bpp]  # uint8 arithmetic: modulo 256, as PNG's Sub filter
    raw = b"".join(b"\x01" + sub[y].tobytes() for y in range(h))
    colour_type = {1: 0, 2: 4, 3: 2, 4: 6}[channels]
    header = _chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, colour_type, 0, 0, 0))
    return b"\x89PNG\r\n\x1a\n" + header + chunks + _chunk(b"IDAT", zlib.compress(raw)) + _chunk(b"IEND", b"")


def tiff(samples: np.ndarray, **kwargs) -> bytes:
    tifffile = pytest.importorskip("tifffile")
    buf = io.BytesIO()
    tifffile.imwrite(buf, samples, **kwargs)
    return buf.getvalue()


def _s15(x: float) -> bytes:
    return struct.pack(">i", round(x * 65536))


def _curve(values: list[int]) -> bytes:
    return b"curv\0\0\0\0" + struct.pack(">I", len(values)) + b"".join(struct.pack(">H", v) for v in values)


def srgb_curve(x: np.ndarray) -> np.ndarray:
    """sRGB's transfer function, encoded value (0…1) → linear light."""
    return np.where(x <= 0.04045, x / 12.92, ((x + 0.055) / 1.055) ** 2.4)


def srgb_encode(y: np.ndarray) -> np.ndarray:
    return np.where(y <= 0.0031308, y * 12.92, 1.055 * np.power(np.maximum(y, 0), 1 / 2.4) - 0.055)


SRGB_TABLE = [round(v * 65535) for v in srgb_curve(np.linspace(0, 1, 1024))]
# colorants adapted to D50, as ICC profiles store them (columns: red, green, blue)
SRGB_D50 = np.array([[0.4360747, 0.3850649, 0.1430804], [0.2225045, 0.7168786, 0.0606169], [0.0139322, 0.0971045, 0.7141733]])
P3_D50 = np.array([[0.515121, 0.291977, 0.157104], [0.241196, 0.692245, 0.066574], [-0.001053, 0.041885, 0.784073]])


def icc_profile(description: str, colorants: np.ndarray | None, trc: list[int], white=(0.9642, 1.0, 0.8249)) -> bytes:
    """A minimal ICC v2 display profile, written byte by byte: an RGB matrix/TRC profile
    (``colorants``: 3×3, columns red, green, blue) or, with ``colorants`` None, a grey one."""
    text = description.encode() + b"\0"
    tags = [
        (b"desc", b"desc\0\0\0\0" + struct.pack(">I", len(text)) + text + b"\0" * 8 + b"\0" * 3 + b"\0" * 67),
        (b"wtpt", b"XYZ \0\0\0\0" + b"".join(_s15(v) for v in white)),
        (b"cprt", b"text\0\0\0\0no copyright\0"),
    ]
    if colorants is None:
        tags.append((b"kTRC", _curve(trc)))
    else:
        tags += [(sig, b"XYZ \0\0\0\0" + b"".join(_s15(v) for v in colorants[:, i])) for i, sig in enumerate((b"rXYZ", b"gXYZ", b"bXYZ"))]
        tags += [(sig, _curve(trc)) for sig in (b"rTRC", b"gTRC", b"bTRC")]
    start = 128 + 4 + 12 * len(tags)
    table, body = b"", b""
    for sig, data in tags:
        body += b"\0" * (-(start + len(body)) % 4)
        table += sig + struct.pack(">II", start + len(body), len(data))
        body += data
    space = b"GRAY" if colorants is None else b"RGB "
    header = struct.pack(">I", start + len(body)) + b"none" + bytes([2, 0x10, 0, 0]) + b"mntr" + space + b"XYZ " + b"\0" * 12 + b"acsp"
    header += b"\0" * 24 + struct.pack(">I", 0) + _s15(0.9642) + _s15(1.0) + _s15(0.8249) + b"\0" * 48
    assert len(header) == 128
    return header + struct.pack(">I", len(tags)) + table + body


P3 = icc_profile("Display P3", P3_D50, SRGB_TABLE)
SRGB_V2 = icc_profile("sRGB IEC61966-2.1", SRGB_D50, SRGB_TABLE, white=(0.9505, 1.0, 1.0891))  # as the common v2 sRGB profile
GAMMA22_GREY = icc_profile("Gray Gamma 2.2", None, [round(2.2 * 256)])


def saved(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def photo(h: int = 48, w: int = 64) -> Image.Image:
    return Image.fromarray(hwc(natural_image(h, w, 3)).copy())


def relative_colorimetric(img: Image.Image, icc: bytes) -> np.ndarray:
    """``img`` (in ``icc``'s colours) converted to sRGB by littlecms, with the intent the policy documents."""
    source = ImageCms.ImageCmsProfile(io.BytesIO(icc))
    out = ImageCms.profileToProfile(
        img, source, ImageCms.createProfile("sRGB"), renderingIntent=ImageCms.Intent.RELATIVE_COLORIMETRIC,
        outputMode="RGB", flags=ImageCms.Flags.BLACKPOINTCOMPENSATION,
    )
    return np.asarray(out)


# --------------------------------------------------------------------------- declared depth


def test_every_16_bit_value_is_reduced_to_round_v_over_257():
    """All 65 536 values of a 16-bit grey PNG: exactly round(v / 257), ties impossible, no float copy."""
    v = np.arange(65536, dtype=np.uint16).reshape(256, 256)
    out = decode(png16(v))
    assert torch.equal(out.pixels, torch.from_numpy(grey3(r257(v))).permute(2, 0, 1))
    assert np.array_equal(r257(v), np.round(v / 257).astype(np.uint8))  # the integer rule is the rounding
    assert np.array_equal(r257(v), ((v.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8))
    assert out.notes == (REDUCED,)


def test_a_dark_16_bit_grey_frame_stays_dark():
    """Values all <= 255 in a 16-bit file are 16-bit values (0 or 1 in 8 bits), not 8-bit ones."""
    v = RNG.integers(0, 256, (40, 50)).astype(np.uint16)
    data = png16(v)
    assert Image.open(io.BytesIO(data)).mode == "I;16"
    out = decode(data)
    assert np.array_equal(hwc(out.pixels), grey3(r257(v))) and out.pixels.max() <= 1
    assert read_header(io.BytesIO(data)) == (50, 40, (REDUCED,))


@pytest.mark.parametrize("channels", [3, 4, 2])
@pytest.mark.parametrize("levels", ["dark", "bright", "full"])
def test_16_bit_colour_pngs_keep_full_precision(channels, levels):
    """RGB, RGBA and grey+alpha at 16 bits: Pillow alone reads the high byte (v >> 8, which turns a
    dark image black and is not round(v / 257)); the decode is exact."""
    low, high = {"dark": (0, 256), "bright": (60000, 65536), "full": (0, 65536)}[levels]
    v = RNG.integers(low, high, (30, 41, channels)).astype(np.uint16)
    out = decode(png16(v))
    colour = v[..., :3] if channels > 2 else np.repeat(v[..., :1], 3, axis=2)
    assert np.array_equal(hwc(out.pixels), r257(colour)) and out.notes == (REDUCED,)
    if levels == "dark":
        assert out.pixels.float().mean() > 0.3  # not black


def test_an_interlaced_16_bit_png_keeps_full_precision():
    pyvips = pytest.importorskip("pyvips")
    v = RNG.integers(0, 65536, (37, 53, 3)).astype(np.uint16)
    data = pyvips.Image.new_from_array(v).copy(format="ushort", interpretation="rgb16").pngsave_buffer(bitdepth=16, interlace=True)
    assert np.array_equal(hwc(decode_image(data)), r257(v))


@pytest.mark.parametrize("byteorder,compression", [("<", None), (">", None), ("<", "zlib"), (">", "zlib")])
def test_16_bit_tiffs_keep_full_precision(byteorder, compression):
    v = RNG.integers(0, 65536, (30, 41, 3)).astype(np.uint16)
    out = decode(tiff(v, byteorder=byteorder, compression=compression, photometric="rgb", rowsperstrip=8))
    assert np.array_equal(hwc(out.pixels), r257(v)) and out.notes == (REDUCED,)
    grey = RNG.integers(0, 256, (30, 41)).astype(np.uint16)  # dark grey TIFF: declared 16 bits too
    assert np.array_equal(hwc(decode_image(tiff(grey, byteorder=byteorder, compression=compression))), grey3(r257(grey)))


def test_a_16_bit_cmyk_tiff_is_reduced_before_its_colours_are_converted():
    v = RNG.integers(0, 65536, (20, 30, 4)).astype(np.uint16)
    cmyk = Image.frombuffer("CMYK", (30, 20), r257(v).tobytes(), "raw", "CMYK", 0, 1)
    assert np.array_equal(hwc(decode_image(tiff(v, photometric="separated"))), np.asarray(cmyk.convert("RGB")))


def test_a_16_bit_image_is_oriented_as_its_exif_says():
    """Orientation 6 (shown turned 90° clockwise), in a PNG's eXIf chunk before the image data."""
    exif = Image.Exif()
    exif[0x0112] = 6
    tiff_header = exif.tobytes()
    tiff_header = tiff_header[6:] if tiff_header.startswith(b"Exif\0\0") else tiff_header
    v = RNG.integers(0, 65536, (20, 30, 3)).astype(np.uint16)
    data = png16(v, chunks=_chunk(b"eXIf", tiff_header))
    assert read_header(io.BytesIO(data)) == (20, 30, (REDUCED,))
    assert np.array_equal(hwc(decode_image(data)), np.rot90(r257(v), k=-1))


def test_32_bit_tiff_is_reduced_by_its_declared_depth():
    v = RNG.integers(0, 2**32, (20, 30), dtype=np.uint64).astype(np.uint32)
    out = decode(tiff(v))
    expected = np.array([(int(x) * 510 + 2**32 - 1) // (2 * (2**32 - 1)) for x in v.ravel()], np.uint8).reshape(v.shape)
    assert np.array_equal(hwc(out.pixels), grey3(expected)) and out.notes == ("32-bit source reduced to 8 bits",)


def test_float_tiff_maps_its_declared_range_and_is_refused_without_one():
    x = RNG.random((20, 30)).astype(np.float32)
    ranged = tiff(x, extratags=[(340, "d", 1, 0.0, True), (341, "d", 1, 1.0, True)])  # SMinSampleValue, SMaxSampleValue
    out = decode(ranged)
    assert np.array_equal(hwc(out.pixels), grey3(np.rint(x.astype(np.float64) * 255).astype(np.uint8)))
    assert out.notes == ("float samples mapped from their declared range [0, 1] to 8 bits",)
    bare = tiff(x)
    for refuse in (lambda: decode(bare), lambda: read_header(io.BytesIO(bare))):
        with pytest.raises(ImageDecodeError, match="float samples with no declared range"):
            refuse()


def png_low(levels: np.ndarray, bits: int) -> bytes:
    """A grey PNG of bit depth 1, 2 or 4 holding ``levels`` (0 … 2^bits − 1), packed high bits first."""
    h, w = levels.shape
    per = 8 // bits
    padded = np.zeros((h, -(-w // per) * per), np.uint16)
    padded[:, :w] = levels
    packed = (padded.reshape(h, -1, per) << (8 - bits * (np.arange(per) + 1))).sum(axis=2).astype(np.uint8)
    raw = b"".join(b"\0" + packed[y].tobytes() for y in range(h))
    header = _chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, bits, 0, 0, 0, 0))
    return b"\x89PNG\r\n\x1a\n" + header + _chunk(b"IDAT", zlib.compress(raw)) + _chunk(b"IEND", b"")


@pytest.mark.parametrize("bits", [1, 2, 4])
def test_low_depth_pngs_are_scaled_to_8_bits_without_a_note(bits):
    """Unchanged by the depth rule: 1-, 2- and 4-bit grey expand exactly (level · 255 / (2^bits − 1))."""
    levels = RNG.integers(0, 2**bits, (30, 41)).astype(np.uint8)
    out = decode(png_low(levels, bits))
    assert np.array_equal(hwc(out.pixels), grey3((levels.astype(np.int64) * 255 // (2**bits - 1)).astype(np.uint8))) and out.notes == ()


def test_a_4_bit_palette_png_decodes_as_before():
    pal = photo().convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    out = decode(saved(pal, "PNG", bits=4))
    assert np.array_equal(hwc(out.pixels), np.asarray(pal.convert("RGB"))) and out.notes == ()


# --------------------------------------------------------------------------- colour profiles


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "TIFF"])
def test_a_wide_gamut_profile_travels_with_its_pixels_without_to_srgb(fmt):
    data = saved(photo(), fmt, icc_profile=P3)
    out = decode(data)
    assert np.array_equal(hwc(out.pixels), np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))) and out.notes == ()
    assert read_header(io.BytesIO(data)).notes == ()


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_to_srgb_converts_as_littlecms_does(fmt):
    data = saved(photo(), fmt, icc_profile=P3, **({"quality": 95} if fmt == "JPEG" else {}))
    out = decode(data, to_srgb=True)
    stored = Image.open(io.BytesIO(data)).convert("RGB")
    assert np.array_equal(hwc(out.pixels), relative_colorimetric(stored, P3))
    assert out.notes == ("colours converted from 'Display P3' to sRGB",)
    assert read_header(io.BytesIO(data), to_srgb=True).notes == out.notes


def test_to_srgb_moves_colours_where_the_primaries_say():
    """One pixel by hand: Display P3 (200, 100, 50) is sRGB (215, 93, 31), from the profiles'
    colorants alone (P3 → XYZ D50 → sRGB), not only what littlecms computes."""
    colour = np.array([200, 100, 50])
    linear = np.linalg.solve(SRGB_D50, P3_D50 @ srgb_curve(colour / 255))
    by_hand = np.round(srgb_encode(np.clip(linear, 0, 1)) * 255)
    out = decode_image(saved(Image.new("RGB", (8, 8), tuple(colour)), "PNG", icc_profile=P3), to_srgb=True)
    assert np.abs(out[:, 0, 0].numpy() - by_hand).max() <= 1 and np.abs(by_hand - colour).max() >= 10


@pytest.mark.parametrize("icc", [SRGB_V2, ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()], ids=["v2-table", "littlecms-v4"])
@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_an_srgb_profile_is_accepted_as_it_is(icc, fmt):
    data = saved(photo(), fmt, icc_profile=icc)
    out = decode(data)
    assert np.array_equal(hwc(out.pixels), np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))) and out.notes == ()
    assert torch.equal(decode_image(data, to_srgb=True), out.pixels)


def test_a_grey_profile_other_than_srgb_is_refused_or_converted():
    grey = photo().convert("L")
    data = saved(grey, "PNG", icc_profile=GAMMA22_GREY)
    with pytest.raises(ImageDecodeError, match="'Gray Gamma 2.2' is not sRGB"):
        decode(data)
    out = decode_image(data, to_srgb=True)
    assert np.array_equal(hwc(out), relative_colorimetric(grey, GAMMA22_GREY)) and not torch.equal(out[0], torch.from_numpy(np.array(grey)))


def test_16_bit_and_wide_gamut_together():
    v = RNG.integers(0, 65536, (20, 30, 3)).astype(np.uint16)
    data = png16(v, chunks=_chunk(b"iCCP", b"Display P3\0\0" + zlib.compress(P3)))
    kept = decode(data)  # coded as stored: the profile travels with the pixels
    assert kept.notes == (REDUCED,) and np.array_equal(hwc(kept.pixels), r257(v))
    out = decode(data, to_srgb=True)
    assert out.notes == (REDUCED, "colours converted from 'Display P3' to sRGB")
    assert np.array_equal(hwc(out.pixels), relative_colorimetric(Image.fromarray(r257(v)), P3))


def test_streamed_regions_leave_deep_and_wide_gamut_sources_to_pillow(tmp_path):
    regions = pytest.importorskip("pipeline.archive.regions")
    if not regions.available():
        pytest.skip("pyvips is not installed")
    from oml import tiling

    rect = tiling.Tile(0, 0, 16, 16)
    (tmp_path / "deep.png").write_bytes(png16(RNG.integers(0, 256, (40, 50, 3)).astype(np.uint16)))
    photo(40, 50).save(tmp_path / "p3.png", icc_profile=P3)
    photo(40, 50).save(tmp_path / "srgb.png", icc_profile=SRGB_V2)
    assert regions.read_region(str(tmp_path / "deep.png"), rect, 50, 40) is None
    assert regions.read_region(str(tmp_path / "p3.png"), rect, 50, 40) is None
    streamed = regions.read_region(str(tmp_path / "srgb.png"), rect, 50, 40)
    assert streamed is not None and torch.equal(streamed, decode_image((tmp_path / "srgb.png").read_bytes())[:, :16, :16])


# --------------------------------------------------------------------------- oml compress / decompress


def test_oml_compress_says_it_reduced_and_keeps_a_dark_frame_dark(tmp_path, capsys):
    """Through the command, with the shipped model: the output line says so, and the restored
    image is as dark as round(v / 257), not up to 257 times brighter."""
    v = (np.add.outer(np.arange(64), np.arange(96)) * 255 // 158).astype(np.uint16)  # 0…255: 0 or 1 in 8 bits
    src = tmp_path / "dark.png"
    src.write_bytes(png16(v))
    assert main(["compress", str(src), "-o", str(tmp_path / "dark.oml")]) == 0
    assert REDUCED in capsys.readouterr().out
    assert main(["decompress", str(tmp_path / "dark.oml"), "-o", str(tmp_path / "back.png")]) == 0
    restored = np.asarray(Image.open(tmp_path / "back.png"), dtype=np.float64)
    assert abs(restored.mean() - r257(v).mean()) < 1.0, (restored.mean(), r257(v).mean())


@pytest.mark.parametrize("kind", ["dark", "bright", "full range"])
def test_a_16_bit_image_comes_back_at_the_mean_level_of_round_v_over_257(tmp_path, kind):
    """Through oml compress and decompress with the shipped model: a smooth 16-bit frame, dark
    (8-bit levels 0-1), bright (254-255) or over the full range, restores within half a level of
    round(v / 257) on average (reading v itself, or its low byte, would be far off)."""
    ramp = np.add.outer(np.arange(64), np.arange(96)).astype(np.float64) / 158
    v = {"dark": ramp * 255, "bright": 65535 - ramp * 255, "full range": ramp * 65535}[kind].astype(np.uint16)
    rgb = np.stack([v, v, v], -1)
    (tmp_path / "deep.png").write_bytes(png16(rgb))
    assert main(["compress", str(tmp_path / "deep.png"), "-o", str(tmp_path / "deep.oml")]) == 0
    assert main(["decompress", str(tmp_path / "deep.oml"), "-o", str(tmp_path / "back.png")]) == 0
    restored = np.asarray(Image.open(tmp_path / "back.png"), dtype=np.float64)
    assert abs(restored.mean() - r257(rgb).mean()) < 0.5, (restored.mean(), r257(rgb).mean())


def test_oml_compress_refuses_float_without_range_and_keeps_wide_gamut_without_to_srgb(tmp_path, capsys, random_default_model):
    from oml.models.zoo import save_weights

    weights = tmp_path / "w.pt"
    save_weights(random_default_model, weights)
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "float.tif").write_bytes(tiff(RNG.random((32, 32)).astype(np.float32)))
    photo(32, 32).save(tmp_path / "in" / "p3.jpg", icc_profile=P3, quality=95)
    code = main(["compress", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--weights", str(weights)])
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1
    assert any("float.tif: float samples with no declared range" in line for line in lines)
    assert [p.name for p in (tmp_path / "out").rglob("*.oml")] == ["p3.oml"]
    src = tmp_path / "in" / "p3.jpg"
    assert main(["compress", str(src), "-o", str(tmp_path / "p3.oml"), "--weights", str(weights), "--to-srgb"]) == 0
    assert "colours converted from 'Display P3' to sRGB" in capsys.readouterr().out


# --------------------------------------------------------------------------- oml archive / restore


def test_plans_resume_across_the_to_srgb_option():
    """An archive planned before --to-srgb existed resumes (the flag off leaves the plan as it was);
    one started with it differs from a run without it."""
    planning = pytest.importorskip("pipeline.archive.plan")
    from pipeline import storage
    from pipeline.archive import CodingConfig, CompressConfig

    files = [storage.SourceFile("/in/a.png", "a.png", 1)]
    plain = planning.settings(CompressConfig("/in", "/out"), files, "f")
    assert "to_srgb" not in plain["coding"]
    planning.check(plain, plain, "/out")
    converting = planning.settings(CompressConfig("/in", "/out", coding=CodingConfig(to_srgb=True)), files, "f")
    assert converting["coding"]["to_srgb"] is True
    with pytest.raises(ValueError, match="coding differ"):
        planning.check(plain, converting, "/out")


@pytest.fixture(scope="module")
def local_ray():
    pytest.importorskip("pipeline.archive")
    from ..conftest import start_local_ray

    ray = start_local_ray()
    yield ray
    ray.shutdown()


def test_oml_archive_refuses_up_front_records_reductions_and_converts_with_to_srgb(local_ray, tmp_path, capsys):
    inp = tmp_path / "in"
    inp.mkdir()
    (inp / "dark.png").write_bytes(png16(RNG.integers(0, 256, (64, 64)).astype(np.uint16)))
    photo(64, 64).save(inp / "p3.jpg", icc_profile=P3, quality=95)
    (inp / "float.tif").write_bytes(tiff(RNG.random((64, 64)).astype(np.float32)))
    photo(64, 64).save(inp / "plain.png")
    common = ["--random-weights", "-q", "2", "--tile", "64", "--no-progress"]

    assert main(["archive", "--input", str(inp), "--output", str(tmp_path / "a"), *common]) == 1
    out = capsys.readouterr().out
    manifest = json.loads((tmp_path / "a" / "manifest.json").read_text())
    reasons = {f["path"]: (f["unit"], f["reason"]) for f in manifest["failed"]}
    assert set(reasons) == {"float.tif"}  # p3.jpg is archived as stored, its profile with it
    assert reasons["float.tif"][0] is None and "float samples with no declared range" in reasons["float.tif"][1]
    summary = json.loads((tmp_path / "a" / "summary.json").read_text())
    assert summary["archived"] == 3 and summary["input_notes"] == {"dark.png": [REDUCED]}
    assert f"1 images changed on the way in (first dark.png: {REDUCED})" in out

    assert main(["archive", "--input", str(inp), "--output", str(tmp_path / "b"), *common, "--to-srgb"]) == 1  # float.tif still refused
    summary = json.loads((tmp_path / "b" / "summary.json").read_text())
    assert summary["archived"] == 3 and summary["to_srgb"] is True
    assert summary["input_notes"] == {"dark.png": [REDUCED], "p3.jpg": ["colours converted from 'Display P3' to sRGB"]}
    from pipeline.archive import DecompressConfig, run_decompress

    report = run_decompress(DecompressConfig(str(tmp_path / "b"), str(tmp_path / "back"), verify=True, sources=str(inp), progress=False))
    # each source is read as it was archived (16-bit reduced, P3 converted) and compared: the same PSNR
    assert {r.path: (r.status, r.checks.get("max_psnr_error")) for r in report.results} == {p: ("ok", 0.0) for p in ("dark.png", "p3.jpg", "plain.png")}
