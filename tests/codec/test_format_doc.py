"""docs/FORMAT.md is the specification: its field tables decode real files here, field by field,
to what the codec reads, and its constants and Parquet columns are the code's."""

from __future__ import annotations

import re
import struct
from pathlib import Path

import numpy as np

DOC = Path(__file__).resolve().parents[2] / "docs" / "FORMAT.md"
SIZES = {"u8": "B", "u16": "H", "u32": "I", "u64": "Q", "f16": "e", "f32": "f", "f64": "d"}


def tables() -> dict[str, list[list[str]]]:
    """Each table's rows (cells stripped of backquotes), by the heading above it."""
    found, heading = {}, ""
    for line in DOC.read_text().splitlines():
        if line.startswith("#"):
            heading = line.lstrip("# ").strip().replace("`", "").split(" (")[0]
        elif line.startswith("|") and not line.startswith("|---"):
            cells = [c.strip().replace("`", "") for c in line.strip().strip("|").split("|")]
            found.setdefault(heading, []).append(cells)
    return {k: rows[1:] for k, rows in found.items()}  # without the header row


class Reader:
    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def item(self, kind: str, fields: dict) -> object:
        if kind in SIZES:
            (value,) = struct.unpack_from("<" + SIZES[kind], self.data, self.pos)
            self.pos += struct.calcsize(SIZES[kind])
            return value
        if re.fullmatch(r"b\d+", kind):
            n = int(kind[1:])
            self.pos += n
            return self.data[self.pos - n : self.pos]
        if kind in ("str8", "str16", "bytes32"):
            n = self.item({"str8": "u8", "str16": "u16", "bytes32": "u32"}[kind], fields)
            self.pos += n
            raw = self.data[self.pos - n : self.pos]
            return raw if kind == "bytes32" else raw.decode()
        raise AssertionError(f"unknown type {kind}")

    def table(self, rows: list[list[str]], context: dict, nested: dict[str, list[list[str]]]) -> dict:
        fields: dict = {}
        for name, kind, *_ in rows:
            if "format 2 and 3 only" in " ".join(_) and context.get("version", 0) < 2:
                continue
            m = re.fullmatch(r"(\S+) × (\S+)", kind)
            if m:
                item, count = m.groups()
                n = eval(count.replace("·", "*"), {}, {**context, **fields, "S": context.get("set_count"), "K": context.get("num_lambdas")})
                fields[name] = [self.table(nested[item], context, nested) if item in nested else self.item(item, fields) for _ in range(n)]
            else:
                fields[name] = self.item(kind, fields)
        return fields


def decode_by_the_document(data: bytes) -> tuple[dict, dict | None, list[dict], int]:
    t = tables()
    nested = {"block": t["Block"]}
    r = Reader(data)
    header = r.table(t["Header"], {}, nested)
    source = r.table(t["Source section"], header, nested) if header["version"] >= 3 else None
    tiles = [r.table(t["Tile"], header, nested) for _ in range(header["num_tiles"])]
    crc = r.table(t["Trailer"], header, nested)["crc"]
    assert r.pos == len(data)
    return header, source, tiles, crc


def test_a_format_3_file_decodes_by_the_document_as_the_codec_reads_it(random_default_model):
    import zlib

    from oml import codec, metadata
    from oml.adapt import AdaptConfig
    from oml.imageio import decode

    from ..metadata_samples import camera_jpeg

    data = camera_jpeg(130, 70)
    enc = codec.encode(random_default_model, decode(data).pixels, quality=2, tile_size=64, adapt_config=AdaptConfig(steps=1, metrics=("psnr", "ms-ssim")),
                       source=metadata.source_of(data, "camera.jpg", 1.5e9))
    h, s, tiles, crc = decode_by_the_document(enc.data)
    header, records = codec.read(enc.data)
    assert (h["magic"], h["version"], h["model"], h["fingerprint"], h["quality"]) == (codec.MAGIC, 3, header.model, header.fingerprint, header.quality)
    assert (h["lambda_t"], h["height"], h["width"], h["tile"], h["num_lambdas"]) == (header.lmbda, header.height, header.width, header.tile, header.num_lambdas)
    assert tuple(h["metrics"]) == header.metrics and h["num_tiles"] == header.num_tiles == len(tiles)
    src = header.source
    assert (s["source_sha256"], s["source_size"], s["mtime"], s["bits"], s["image_format"], s["name"]) == (src.sha256, src.size, src.mtime, src.bits, src.format, src.name)
    assert codec.SAMPLE_FORMATS[s["sample_format"]] == src.sample_format and tuple(s["cut"]) == src.cut
    assert [(b["kind"], b["data"]) for b in s["blocks"]] == list(src.blocks)
    for t, rec in zip(tiles, records):
        assert (t["z_height"], t["z_width"]) == rec.z_shape and t["strings"] == rec.strings and t["check"] == rec.check
        assert np.array_equal(np.array(t["lambdas"], np.float16), rec.lambdas.numpy().ravel())
    assert crc == zlib.crc32(enc.data[:-4])
    # format 2: no source section; the same tables read it
    h2, s2, tiles2, _ = decode_by_the_document(codec.with_source(enc.data, None))
    assert h2["version"] == 2 and s2 is None and len(tiles2) == len(tiles)


def test_the_constants_are_the_codes():
    from oml import codec, tiling
    from oml.models import exact

    c = {row[0]: row[1] for row in tables()["Constants"]}
    assert c["MAGIC"].encode() == codec.MAGIC
    assert int(c["FORMAT_VERSION"]) == codec.FORMAT_VERSION and int(c["SOURCE_VERSION"]) == codec.SOURCE_VERSION
    assert tuple(int(v) for v in c["READABLE_VERSIONS"].split(", ")) == codec.READABLE_VERSIONS
    assert c["SAMPLE_FORMATS"].split(", ") == ["unknown", *codec.SAMPLE_FORMATS[1:]]
    assert (int(c["MULTIPLE"]), int(c["MAX_TILE"]), int(c["MAX_LAMBDAS"])) == (tiling.MULTIPLE, tiling.MAX_TILE, codec.MAX_LAMBDAS)
    assert (int(c["FRACTION_BITS"]), int(c["RANGE_BITS"]), int(c["WEIGHT_BITS"])) == (exact.FRACTION_BITS, exact.RANGE_BITS, exact.WEIGHT_BITS)
    versions = [int(row[0]) for row in tables()["Versions"]]
    assert tuple(versions) == codec.READABLE_VERSIONS
    kinds = re.findall(r"[A-Za-z]+", tables()["Block"][0][2].split(":", 1)[1])
    from oml import metadata

    assert sorted(kinds) == sorted(metadata.KINDS)


def test_the_parquet_columns_are_the_schemas():
    from pipeline.archive import schema

    t = tables()
    for heading, table in (("Images table", schema.IMAGE_SCHEMA), ("Tiles table", schema.TILE_SCHEMA)):
        assert [(row[0], row[1]) for row in t[heading]] == [(f.name, str(f.type)) for f in table], heading
