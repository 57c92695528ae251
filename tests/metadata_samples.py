"""Real files carrying metadata, as cameras, scanners and editors write them (built here, with Pillow)."""

from __future__ import annotations

import io
import struct

import numpy as np
from PIL import Image, PngImagePlugin

from .codec.test_depth_and_colour import P3

ARTIST = "Ada Lovelace"
DATE = "2024:05:17 10:42:07"
XMP = (
    b'<?xpacket begin="\xef\xbb\xbf" id="W5M0MpCehiHzreSzNTczkc9d"?>'
    b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
    b'<rdf:Description xmlns:dc="http://purl.org/dc/elements/1.1/"><dc:rights>CC BY 4.0</dc:rights>'
    b"<dc:subject>lighthouse, coast</dc:subject></rdf:Description></rdf:RDF></x:xmpmeta>"
    b'<?xpacket end="w"?>'
)
IPTC = b"\x1c\x02\x00\x00\x02\x00\x04" + b"\x1c\x02\x50\x00\x0c" + ARTIST.encode()  # record version 4, By-line


def picture(width: int = 40, height: int = 24, seed: int = 3) -> Image.Image:
    rng = np.random.default_rng(seed)
    base = np.linspace(0, 255, width)[None, :, None] * np.ones((height, 1, 3))
    return Image.fromarray(np.clip(base + rng.normal(0, 12, (height, width, 3)), 0, 255).astype(np.uint8))


def camera_exif(orientation: int = 6) -> Image.Exif:
    exif = Image.Exif()
    exif[0x010F] = "OML Camera Co."  # Make
    exif[0x0110] = "Model 7"
    exif[0x013B] = ARTIST  # Artist
    exif[0x8298] = "(c) 2024 Ada Lovelace"  # Copyright
    exif[0x0112] = orientation
    exif.get_ifd(0x8769)[0x9003] = DATE  # DateTimeOriginal
    gps = exif.get_ifd(0x8825)
    gps[1], gps[2], gps[3], gps[4] = "N", (51.0, 30.0, 26.0), "W", (0.0, 7.0, 39.0)
    return exif


def _app13(iptc: bytes) -> bytes:
    resource = b"8BIM" + struct.pack(">H", 0x0404) + b"\x00\x00" + struct.pack(">I", len(iptc)) + iptc + b"\x00" * (len(iptc) & 1)
    body = b"Photoshop 3.0\x00" + resource
    return b"\xff\xed" + struct.pack(">H", len(body) + 2) + body


def camera_jpeg(width: int = 40, height: int = 24) -> bytes:
    """A JPEG with EXIF (date, artist, GPS, orientation 6), a Display P3 profile, XMP and IPTC."""
    buf = io.BytesIO()
    picture(width, height).save(buf, format="JPEG", quality=90, exif=camera_exif(), icc_profile=P3, xmp=XMP)
    data = buf.getvalue()
    return data[:2] + _app13(IPTC) + data[2:]


def text_png(width: int = 40, height: int = 24) -> bytes:
    """A PNG with tEXt, zTXt and iTXt chunks, a Display P3 iCCP and gAMA."""
    info = PngImagePlugin.PngInfo()
    info.add_text("Title", "Harbour at dawn")
    info.add_text("Description", "labels: boat, pier " * 20, zip=True)
    info.add_itxt("Comment", "Hafen im Morgengrauen ⚓", lang="de", tkey="Kommentar")
    info.add(b"gAMA", struct.pack(">I", 45455))
    buf = io.BytesIO()
    picture(width, height, 5).save(buf, format="PNG", pnginfo=info, icc_profile=P3)
    return buf.getvalue()


def profiled_tiff(width: int = 40, height: int = 24) -> bytes:
    """A TIFF with a Display P3 profile."""
    buf = io.BytesIO()
    picture(width, height, 7).save(buf, format="TIFF", icc_profile=P3)
    return buf.getvalue()
