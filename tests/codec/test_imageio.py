"""Input policy: formats, modes, orientation, and one clear error per bad file."""

import io

import numpy as np
import pytest
import torch
from PIL import Image

from oml.imageio import ImageDecodeError, decode_image, encode_png


def _encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _rgb(w=40, h=30):
    arr = np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)
    return Image.fromarray(arr)


@pytest.mark.parametrize("fmt,kw", [("PNG", {}), ("JPEG", {"quality": 90}), ("WEBP", {"quality": 90}), ("TIFF", {})])
def test_formats_decode_to_rgb8(fmt, kw):
    out = decode_image(_encode(_rgb(), fmt, **kw))
    assert out.dtype == torch.uint8 and out.shape == (3, 30, 40)


def test_png_is_lossless():
    img = _rgb()
    assert torch.equal(decode_image(_encode(img, "PNG")), torch.from_numpy(np.array(img)).permute(2, 0, 1))
    assert torch.equal(decode_image(encode_png(decode_image(_encode(img, "PNG")))), decode_image(_encode(img, "PNG")))


def test_exif_orientation_is_applied():
    """Pixels, not only the shape: orientation 6 shows the stored image turned 90° clockwise."""
    img = _rgb(40, 30)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise when shown
    out = decode_image(_encode(img, "PNG", exif=exif))
    expected = torch.from_numpy(np.asarray(img.transpose(Image.Transpose.ROTATE_270)).copy()).permute(2, 0, 1)
    assert out.shape == (3, 40, 30) and torch.equal(out, expected)
    assert decode_image(_encode(img, "JPEG", exif=exif)).shape == (3, 40, 30)


def test_a_png_orientation_after_the_image_data_is_ignored_by_header_and_decoder_alike():
    """A PNG's eXIf chunk counts only before IDAT, where a reader of the header finds it. One after
    IDAT is ignored by the decoder as by image_size, so such a file is archived as stored, not
    planned at one size and refused at another."""
    import struct
    import zlib

    from oml.imageio import image_size

    img = _rgb(40, 30)
    exif = Image.Exif()
    exif[0x0112] = 6
    tiff = exif.tobytes()
    tiff = tiff[6:] if tiff.startswith(b"Exif\0\0") else tiff
    chunk = struct.pack(">I", len(tiff)) + b"eXIf" + tiff + struct.pack(">I", zlib.crc32(b"eXIf" + tiff))
    png = _encode(img, "PNG")
    late = png[:-12] + chunk + png[-12:]  # before IEND, after IDAT
    assert late.index(b"eXIf") > late.index(b"IDAT")
    out = decode_image(late)
    assert image_size(io.BytesIO(late)) == (40, 30) and out.shape == (3, 30, 40)
    assert torch.equal(out, torch.from_numpy(np.array(img)).permute(2, 0, 1))
    early = _encode(img, "PNG", exif=exif)
    assert early.index(b"eXIf") < early.index(b"IDAT")
    assert image_size(io.BytesIO(early)) == (30, 40) and decode_image(early).shape == (3, 40, 30)


def test_grayscale_palette_rgba_and_16_bit():
    gray = Image.fromarray(np.arange(256, dtype=np.uint8).reshape(16, 16))
    out = decode_image(_encode(gray, "PNG"))
    assert out.shape == (3, 16, 16) and torch.equal(out[0], out[1])
    pal = _rgb().convert("P")
    assert decode_image(_encode(pal, "PNG")).shape == (3, 30, 40)
    rgba = _rgb().convert("RGBA")
    assert torch.equal(decode_image(_encode(rgba, "PNG")), decode_image(_encode(_rgb(), "PNG")))
    deep = Image.fromarray(np.arange(256, dtype=np.uint16).reshape(16, 16) * 257)
    out16 = decode_image(_encode(deep, "PNG"))
    assert out16[0, 0, 0] == 0 and out16[0, -1, -1] == 255


@pytest.mark.parametrize(
    "data,match",
    [
        (b"", "empty"),
        (b"hello, not an image", "not a supported image format"),
        (None, "corrupt or truncated"),
    ],
)
def test_bad_inputs_give_one_line_errors(data, match):
    if data is None:
        data = _encode(_rgb(200, 200), "PNG")[:300]
    with pytest.raises(ImageDecodeError, match=match) as info:
        decode_image(data)
    assert "\n" not in str(info.value)


def test_pixel_limit():
    with pytest.raises(ImageDecodeError, match="over the limit"):
        decode_image(_encode(_rgb(40, 30), "PNG"), max_pixels=1000)


@pytest.mark.parametrize("fmt", ["GIF", "WEBP"])
def test_animated_images_are_refused_not_cut_to_one_frame(fmt):
    frames = [_rgb(), _rgb().transpose(Image.Transpose.FLIP_LEFT_RIGHT)]
    data = _encode(frames[0], fmt, save_all=True, append_images=frames[1:], duration=100)
    with pytest.raises(ImageDecodeError, match="animated image with 2 frames"):
        decode_image(data)


def test_a_header_only_png_is_refused_before_its_pixels_are_allocated():
    """12000² declared in 100-odd bytes: refused from the header (deflate expands at most 1032:1),
    while a genuinely tiny-to-store large PNG (all one colour) still decodes."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header_only = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 12000, 12000, 8, 2, 0, 0, 0)) + chunk(b"IEND", b"")
    with pytest.raises(ImageDecodeError, match="cannot hold a 12000x12000 PNG"):  # said before load()
        decode_image(header_only)
    solid = _encode(Image.new("RGB", (2000, 1500), (10, 200, 30)), "PNG")
    assert len(solid) * 1032 > 1500 * 251 and decode_image(solid).shape == (3, 1500, 2000)


def _jpeg_claiming(width: int, height: int, scan: bool) -> bytes:
    """A valid small JPEG whose frame header claims ``width``×``height``; ``scan=False`` cuts the
    entropy-coded data off (headers, then EOI), as a forged or badly truncated file would."""
    import struct

    data = bytearray(_encode(Image.new("RGB", (16, 16), (90, 120, 200)), "JPEG"))
    sof = data.find(b"\xff\xc0")
    struct.pack_into(">HH", data, sof + 5, height, width)
    if not scan:
        sos = data.find(b"\xff\xda")
        data = data[: sos + 2 + struct.unpack_from(">H", data, sos + 2)[0]] + b"\xff\xd9"
    return bytes(data)


@pytest.mark.parametrize("scan", [False, True])
def test_a_jpeg_too_short_for_its_frame_is_refused_not_filled_with_grey(scan):
    """libjpeg fills what is missing with grey and Pillow passes that on without a word: a
    12000² frame needs at least one bit per 8×8 block (281 250 bytes) whatever the content."""
    with pytest.raises(ImageDecodeError, match="cannot hold a 12000x12000 JPEG"):
        decode_image(_jpeg_claiming(12000, 12000, scan))
    # the smallest legitimate files of a large frame still decode: one grey level, grey-scale,
    # progressive with optimised tables, and the 4:2:0 default
    for mode, kw in [("L", dict(quality=5, progressive=True, optimize=True)), ("RGB", dict(quality=5, subsampling=2, optimize=True))]:
        assert decode_image(_encode(Image.new(mode, (4000, 3000), 128), "JPEG", **kw)).shape == (3, 3000, 4000)


def test_header_only_tiff_and_webp_are_refused():
    import struct

    tiff = bytearray(_encode(Image.new("RGB", (16, 16)), "TIFF", compression="tiff_deflate"))
    ifd = struct.unpack_from("<I", tiff, 4)[0]
    for k in range(struct.unpack_from("<H", tiff, ifd)[0]):
        tag, kind = struct.unpack_from("<HH", tiff, ifd + 2 + 12 * k)
        if tag in (256, 257, 278):  # width, length, rows per strip
            struct.pack_into("<H" if kind == 3 else "<I", tiff, ifd + 2 + 12 * k + 8, 12000)
    webp = bytearray(_encode(Image.new("RGB", (16, 16), (1, 2, 3)), "WEBP", quality=50))
    struct.pack_into("<HH", webp, webp.find(b"VP8 ") + 14, 12000, 12000)
    for data in (bytes(tiff), bytes(webp)):
        with pytest.raises(ImageDecodeError, match="corrupt or truncated"):
            decode_image(data)


def test_header_sizes_are_read_without_decoding_even_past_pillows_own_limit():
    """A 20000x20000 PNG header (400 Mpixel, over Pillow's built-in bomb limit): its size is read
    from the header alone; this module's max_pixels, not Pillow's, decides what is refused."""
    import io
    import struct
    import zlib

    from oml.imageio import image_size

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = chunk(b"IHDR", struct.pack(">IIBBBBB", 20000, 20000, 8, 2, 0, 0, 0)) + chunk(b"IDAT", b"") + chunk(b"IEND", b"")
    assert image_size(io.BytesIO(b"\x89PNG\r\n\x1a\n" + header)) == (20000, 20000)
