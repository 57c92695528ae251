"""Metadata blocks, verbatim: taken from real files (built here), written back into the restored PNG,
and read back by Pillow the same (EXIF's orientation aside: the pixels are already upright)."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from oml import metadata
from oml.imageio import decode, describe, encode_png

from ..metadata_samples import ARTIST, DATE, IPTC, XMP, camera_jpeg, profiled_tiff, text_png
from .test_depth_and_colour import P3

SAMPLES = {"camera.jpg": camera_jpeg, "text.png": text_png, "profiled.tif": profiled_tiff}


def restored(data: bytes, blocks) -> Image.Image:
    img = Image.open(io.BytesIO(metadata.write_png(encode_png(decode(data).pixels), blocks)))
    img.load()
    return img


def test_a_camera_jpeg_gives_every_block_byte_for_byte():
    data = camera_jpeg()
    found = dict(metadata.extract(data).blocks)
    assert set(found) == {"exif", "icc", "xmp", "iptc"}
    assert found["icc"] == P3 and found["xmp"] == XMP and found["iptc"] == IPTC
    source = Image.open(io.BytesIO(data))
    assert b"Exif\x00\x00" + found["exif"] == source.info["exif"]
    assert metadata.exif_orientation(found["exif"]) == 6


def test_a_restored_png_carries_the_same_exif_icc_xmp_and_text():
    data = camera_jpeg()
    blocks = metadata.extract(data).blocks
    img = restored(data, blocks)
    assert img.size == (24, 40)  # oriented: orientation 6 turned the 40x24 frame
    exif, source = img.getexif(), Image.open(io.BytesIO(data)).getexif()
    assert "exif" in img.info, "the restored PNG has no EXIF"
    assert exif.get(0x0112) == 1 and exif.get(0x013B) == ARTIST
    assert exif.get_ifd(0x8769)[0x9003] == DATE
    assert exif.get_ifd(0x8825) == source.get_ifd(0x8825)
    assert {k: v for k, v in exif.items() if k != 0x0112} == {k: v for k, v in source.items() if k != 0x0112}
    assert img.info["icc_profile"] == P3 and img.info["xmp"] == XMP
    # the EXIF stream differs from the source's in the orientation's two bytes only
    ours = img.info["exif"].removeprefix(b"Exif\x00\x00")
    theirs = dict(blocks)["exif"]
    assert len(ours) == len(theirs) and sum(a != b for a, b in zip(ours, theirs)) == 1
    assert metadata.canonical(metadata.blocks_of(metadata.write_png(encode_png(decode(data).pixels), blocks))) == metadata.canonical(blocks)


def test_png_text_and_colour_chunks_come_back_as_they_were():
    data = text_png()
    blocks = metadata.extract(data).blocks
    assert [k for k, _ in blocks] == ["icc", "tEXt", "zTXt", "iTXt", "gAMA"]
    img, source = restored(data, blocks), Image.open(io.BytesIO(data))
    for key in ("Title", "Description", "Comment", "gamma", "icc_profile"):
        assert img.info[key] == source.info[key]
    assert metadata.blocks_of(metadata.write_png(encode_png(decode(data).pixels), blocks)) == [b for b in blocks if b[0] == "icc"] + [b for b in blocks if b[0] == "gAMA"] + [b for b in blocks if b[0] in metadata.TEXT_CHUNKS]


def test_a_tiff_profile_travels_with_its_pixels():
    data = profiled_tiff()
    assert metadata.extract(data).blocks == (("icc", P3),)
    assert restored(data, metadata.extract(data).blocks).info["icc_profile"] == P3
    assert describe(data) == ("TIFF", 8, "uint", False)


def test_a_profile_travels_unless_colours_are_converted():
    data = camera_jpeg()
    kept = decode(data)
    assert kept.notes == () and not describe(data).converted
    converted = decode(data, to_srgb=True)
    assert describe(data, to_srgb=True).converted and converted.notes
    assert "icc" not in dict(metadata.extract(data, colours_converted=True).blocks)
    assert "exif" in dict(metadata.extract(data, colours_converted=True).blocks)


def test_the_size_bound_keeps_whole_blocks_and_names_what_was_cut():
    data = camera_jpeg()
    full = metadata.extract(data)
    assert full.cut == ()
    limited = metadata.extract(data, limit=1000)  # the 6.6 kB profile does not fit, the rest does
    assert limited.cut == ("icc",)
    assert [k for k, _ in limited.blocks] == [k for k, _ in full.blocks if k != "icc"]
    assert metadata.extract(data, limit=0) == ((), ("icc", "exif", "xmp", "iptc"))


def test_orientation_is_set_to_one_and_nothing_else_changes():
    exif = Image.Exif()
    exif[0x0112], exif[0x013B] = 8, ARTIST
    exif.endian = "<"  # little-endian (II); the camera's is big-endian (MM)
    camera = dict(metadata.extract(camera_jpeg()).blocks)["exif"]
    for raw in (exif.tobytes().removeprefix(b"Exif\x00\x00"), camera):
        upright = metadata.upright_exif(raw)
        assert metadata.exif_orientation(raw) in (6, 8) and metadata.exif_orientation(upright) == 1
        assert sum(a != b for a, b in zip(raw, upright)) == 1 and len(raw) == len(upright)
    assert metadata.upright_exif(b"not exif") == b"not exif"


def test_an_image_without_metadata_has_no_blocks_and_a_png_is_left_as_it_is():
    data = encode_png(decode(text_png()).pixels)
    assert metadata.extract(data) == ((), ())
    assert metadata.write_png(data, ()) == data


# --------------------------------------------------------------------------- oml compress / decompress / info


@pytest.fixture(scope="module")
def weights(tmp_path_factory, random_default_model):
    from oml.models.zoo import save_weights

    path = tmp_path_factory.mktemp("w") / "w.pt"
    save_weights(random_default_model, path)
    return path


def test_oml_files_carry_the_blocks_and_provenance_and_decompress_writes_them_back(tmp_path, weights, capsys):
    import hashlib
    import os

    from oml import codec
    from pipeline.cli import main

    inp = tmp_path / "in"
    inp.mkdir()
    for name, make in SAMPLES.items():
        (inp / name).write_bytes(make(64, 48))
    os.utime(inp / "camera.jpg", (1_700_000_000, 1_700_000_000))
    assert main(["compress", str(inp), "-o", str(tmp_path / "oml"), "--weights", str(weights), "-q", "2"]) == 0
    assert main(["decompress", str(tmp_path / "oml"), "-o", str(tmp_path / "back"), "--weights", str(weights)]) == 0
    for name in SAMPLES:
        data = (inp / name).read_bytes()
        coded = (tmp_path / "oml" / f"{name.rsplit('.', 1)[0]}.oml").read_bytes()
        header = codec.read_header(coded)
        assert header.version == 3 and header.source.blocks == metadata.extract(data).blocks
        assert header.source.sha256 == hashlib.sha256(data).digest() and header.source.size == len(data)
        assert (header.source.name, header.source.bits, header.source.sample_format) == (name, 8, "uint")
        back = (tmp_path / "back" / f"{name.rsplit('.', 1)[0]}.png").read_bytes()
        assert metadata.canonical(metadata.blocks_of(back)) == metadata.canonical(metadata.extract(data).blocks)
        assert Image.open(io.BytesIO(back)).info["icc_profile"] == P3  # the profile is attached
    camera = codec.read_header((tmp_path / "oml" / "camera.oml").read_bytes()).source
    assert camera.mtime == 1_700_000_000 and camera.format == "JPEG"
    capsys.readouterr()
    assert main(["info", str(tmp_path / "oml" / "camera.oml")]) == 0
    out = capsys.readouterr().out
    assert "source camera.jpg: JPEG, 8-bit uint samples" in out and "2023-11-14T22:13:20+00:00" in out
    assert "exif (orientation 6): 298 bytes" in out and "icc: 6628 bytes" in out and "xmp: 348 bytes" in out


def test_metadata_over_the_limit_is_named_and_to_srgb_drops_the_profile(tmp_path, weights, capsys):
    from oml import codec
    from pipeline.cli import main

    src = tmp_path / "camera.jpg"
    src.write_bytes(camera_jpeg(64, 48))
    assert main(["compress", str(src), "-o", str(tmp_path / "a.oml"), "--weights", str(weights), "--metadata-limit", "1000"]) == 0
    assert "metadata over the 1000-byte limit left out: icc" in capsys.readouterr().out
    source = codec.read_header((tmp_path / "a.oml").read_bytes()).source
    assert source.cut == ("icc",) and "icc" not in dict(source.blocks) and "exif" in dict(source.blocks)
    assert main(["compress", str(src), "-o", str(tmp_path / "b.oml"), "--weights", str(weights), "--to-srgb"]) == 0
    source = codec.read_header((tmp_path / "b.oml").read_bytes()).source
    assert source.cut == () and "icc" not in dict(source.blocks) and "xmp" in dict(source.blocks)
    assert main(["compress", str(src), "-o", str(tmp_path / "c.oml"), "--weights", str(weights), "--metadata-limit", "-1"]) == 2


def test_the_source_section_needs_no_pixel_data():
    """A source streamed band by band gives its source section from its bytes without the pixel
    data: the same section as from the whole file, a text chunk after IDAT included."""
    import hashlib

    from oml.metadata import png_chunk

    png = text_png(400, 300)
    end = png.rindex(b"IEND") - 4
    late = png[:end] + png_chunk(b"tEXt", b"Late\x00after the pixels") + png[end:]
    for data in (late, camera_jpeg(400, 300)):
        kept = metadata.without_pixels(io.BytesIO(data))
        assert len(kept) < len(data) // 2
        if data is late:
            assert [len(body) for kind, body in metadata._png_chunks(kept) if kind == "IDAT"] == [0] * late.count(b"IDAT")
        whole = metadata.source_of(data, "a", 1.0)
        assert metadata.source_of(kept, "a", 1.0, size=len(data), sha256=hashlib.sha256(data).digest()) == whole
    assert ("tEXt", b"Late\x00after the pixels") in metadata.source_of(late, "a", None).blocks
