"""Bytes a format-3 .oml file adds per image for its source section (provenance and metadata blocks).

    python bench/metadata_cost.py ../shared/data/kodak

Kodak's PNGs carry no metadata; camera-like JPEGs are made here from the same pictures, with EXIF
(make, model, artist, copyright, date, GPS, orientation), an sRGB or Display P3 ICC profile and
XMP, as Pillow writes them. The source section does not depend on the coded tiles, so its size is
exactly what a file grows by (``len(codec.pack_source(...))``).
"""

from __future__ import annotations

import io
import statistics
import sys
from pathlib import Path

from PIL import Image, ImageCms

from oml import codec, metadata

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.metadata_samples import XMP, camera_exif  # noqa: E402
from tests.codec.test_depth_and_colour import P3  # noqa: E402


def main(folder: str) -> None:
    files = sorted(Path(folder).glob("*.png"))
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    rows = {"kodak PNG (no metadata)": [], "JPEG + EXIF + sRGB ICC + XMP": [], "JPEG + EXIF + Display P3 ICC + XMP": []}
    for f in files:
        data = f.read_bytes()
        rows["kodak PNG (no metadata)"].append(len(codec.pack_source(metadata.source_of(data, f.name, f.stat().st_mtime))))
        for label, icc in (("JPEG + EXIF + sRGB ICC + XMP", srgb), ("JPEG + EXIF + Display P3 ICC + XMP", P3)):
            buf = io.BytesIO()
            Image.open(f).convert("RGB").save(buf, format="JPEG", quality=90, exif=camera_exif(), icc_profile=icc, xmp=XMP)
            jpeg = buf.getvalue()
            rows[label].append(len(codec.pack_source(metadata.source_of(jpeg, f.stem + ".jpg", 1.7e9))))
    for label, sizes in rows.items():
        print(f"{label}: {statistics.mean(sizes):.0f} bytes added per image (min {min(sizes)}, max {max(sizes)}, {len(sizes)} images)")
    print(f"ICC profiles: sRGB {len(srgb)} bytes, Display P3 {len(P3)} bytes; EXIF {len(camera_exif().tobytes()) - 6} bytes; XMP {len(XMP)} bytes")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "../shared/data/kodak")
