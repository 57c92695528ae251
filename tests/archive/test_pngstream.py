"""The streaming PNG writer: bands compressed apart, joined in order, decode to the exact pixels."""

from __future__ import annotations

import io
import zlib

import numpy as np
import pytest
from PIL import Image

from pipeline.archive.pngstream import PngWriter, combine_adler, encode_band

from ..conftest import natural_image


def _png(image: np.ndarray, cuts: list[int]) -> bytes:
    out = io.BytesIO()
    writer = PngWriter(out, image.shape[1], image.shape[0])
    for top, bottom in zip(cuts, cuts[1:]):
        writer.write(encode_band(image[top:bottom], rows_at_once=7))
    writer.close()
    return out.getvalue()


@pytest.mark.parametrize("cuts", [[0, 90], [0, 1, 2, 45, 89, 90], [0, 30, 60, 90]])
def test_bands_joined_in_order_are_one_valid_png_of_the_exact_pixels(cuts):
    """Smooth content (every filter gets chosen somewhere) and noise, with bands of 1 to 90 rows."""
    smooth = natural_image(90, 77, 3).permute(1, 2, 0).numpy()
    noise = np.random.default_rng(0).integers(0, 256, (90, 77, 3), dtype=np.uint8)
    for image in (smooth, noise, np.zeros((90, 77, 3), np.uint8)):
        data = _png(image, cuts)
        with Image.open(io.BytesIO(data)) as decoded:
            decoded.load()  # verifies every chunk's CRC and the zlib stream's Adler-32
            assert decoded.mode == "RGB" and np.array_equal(np.asarray(decoded), image)
        assert len(zlib.decompress(_idat(data))) == 90 * (1 + 3 * 77)  # zlib checks the Adler-32 (Pillow does not)


def _idat(png: bytes) -> bytes:
    """The concatenated IDAT payloads of a PNG."""
    pos, out = 8, []
    while pos < len(png):
        length = int.from_bytes(png[pos:pos + 4], "big")
        if png[pos + 4:pos + 8] == b"IDAT":
            out.append(png[pos + 8:pos + 8 + length])
        pos += 12 + length
    return b"".join(out)


def test_adler_of_a_concatenation_comes_from_its_parts():
    rng = np.random.default_rng(1)
    for n1, n2 in [(0, 5), (5, 0), (1, 70_000), (123_456, 99_999)]:
        a, b = rng.bytes(n1), rng.bytes(n2)
        assert combine_adler(zlib.adler32(a), zlib.adler32(b), len(b)) == zlib.adler32(a + b)


def test_bands_that_do_not_fill_the_image_exactly_are_refused():
    image = natural_image(20, 16, 0).permute(1, 2, 0).numpy()
    writer = PngWriter(io.BytesIO(), 16, 20)
    writer.write(encode_band(image[:10]))
    with pytest.raises(ValueError, match="10 rows written of 20"):
        writer.close()
    with pytest.raises(ValueError, match="does not fit"):
        writer.write(encode_band(image))  # 20 more rows below row 10
    with pytest.raises(ValueError, match="does not fit"):
        PngWriter(io.BytesIO(), 15, 20).write(encode_band(image[:5]))  # another width
