"""The archive's Parquet schemas: one row per coded tile, one row per image.

A unit of work (:mod:`pipeline.archive.plan`) writes two Parquet files: its tiles
(``TILE_SCHEMA``, keyed by the image's ``path`` and the tile's row-major ``index``)
and the metadata of the images whose first tile it coded (``IMAGE_SCHEMA``: the codec
header's fields and the source's checksum). An image's tiles may come from several
units; :func:`coded_bytes` rebuilds the image's exact ``oml`` byte string from its
image row and all its tile rows, without the source. Checksums and PSNR values recorded
at compression time let a later decompression verify itself.
The full field list, with units, is in ``docs/ARCHIVE.md``.
"""

from __future__ import annotations

import hashlib
import io
import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor

from oml import codec, metrics, tiling

try:
    import pyarrow as pa
    import pyarrow.parquet as pq
except ImportError as exc:  # pragma: no cover - depends on the installation
    raise ImportError("the archiving pipeline needs pyarrow: pip install 'oml-archive[pipeline]'") from exc

SCHEMA_VERSION = "5"  # 4: SHA-256 digests stored as 32 bytes, not 64 hex characters; 5: provenance and metadata blocks

METADATA_BLOCK = pa.struct([("kind", pa.string()), ("data", pa.binary())])

TILE_SCHEMA = pa.schema(
    [
        ("path", pa.string()),
        ("index", pa.int32()),
        ("top", pa.int32()),
        ("left", pa.int32()),
        ("height", pa.int32()),
        ("width", pa.int32()),
        ("z_height", pa.int32()),
        ("z_width", pa.int32()),
        ("strings", pa.list_(pa.binary())),
        ("check", pa.int64()),
        ("lambdas", pa.list_(pa.float16())),
        ("num_bytes", pa.int32()),
        ("record_sha256", pa.binary(32)),
        ("bpp", pa.float64()),
        ("psnr_before", pa.float64()),
        ("psnr_after", pa.float64()),
        ("reconstruction_sha256", pa.binary(32)),
    ],
    metadata={"oml-archive-schema": SCHEMA_VERSION, "oml-archive-rows": "tiles"},
)

IMAGE_SCHEMA = pa.schema(
    [
        ("source", pa.string()),
        ("path", pa.string()),
        ("source_bytes", pa.int64()),
        ("source_sha256", pa.binary(32)),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("model", pa.string()),
        ("fingerprint", pa.binary(8)),
        ("format_version", pa.int8()),
        ("quality", pa.int16()),
        ("lmbda", pa.float32()),
        ("tile_size", pa.int32()),
        ("num_lambdas", pa.int16()),
        ("metrics", pa.list_(pa.string())),
        ("num_tiles", pa.int32()),
        ("header_sha256", pa.binary(32)),
        ("source_mtime", pa.float64()),
        ("source_format", pa.string()),
        ("source_bits", pa.int16()),
        ("source_sample_format", pa.string()),
        ("metadata", pa.list_(METADATA_BLOCK)),
        ("metadata_cut", pa.list_(pa.string())),
    ],
    metadata={"oml-archive-schema": SCHEMA_VERSION, "oml-archive-rows": "images"},
)

SIDECAR = pa.struct([("name", pa.string()), ("data", pa.binary())])

SAMPLE_IMAGE_SCHEMA = pa.schema(
    [*IMAGE_SCHEMA, ("key", pa.string()), ("sidecars", pa.list_(SIDECAR))],
    metadata=IMAGE_SCHEMA.metadata,
)
"""The images table of an archive of WebDataset shards: each row also has its sample's ``key`` and
its other members verbatim (``sidecars``: field name, bytes; :mod:`pipeline.archive.webdataset`)."""


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def digest(data: bytes) -> bytes:
    """The 32-byte SHA-256 a row stores (schema 4; :func:`hex_of` reads it as :func:`sha256` writes it)."""
    return hashlib.sha256(data).digest()


def hex_of(stored: Any) -> Any:
    """A row's stored digest as hex: 32 bytes since schema 4, a hex string in files written before
    (anything else is returned as is, and compares unequal to every digest)."""
    return stored.hex() if isinstance(stored, (bytes, bytearray)) else stored


def pixels_sha256(image: Tensor) -> str:
    """SHA-256 of a uint8 ``(3, h, w)`` image's bytes in C order."""
    return sha256(image.cpu().contiguous().numpy().tobytes())


def psnr(a: Tensor, b: Tensor) -> float:
    """PSNR in dB of two uint8 images (``inf`` when equal), computed as :mod:`oml.codec` reports it."""
    return float(metrics.psnr(a, b))


def squared_error(psnr_db: float, pixels: int) -> float:
    """The sum of squared errors (8-bit scale) of ``pixels`` pixels coded at ``psnr_db`` dB."""
    return 0.0 if math.isinf(psnr_db) else pixels * 255.0**2 / 10 ** (psnr_db / 10)


def psnr_of(sse: float, pixels: int) -> float:
    """Image PSNR in dB from its tiles' summed squared errors (the pixel-weighted mean of their MSE)."""
    return float("inf") if sse == 0 else 10.0 * math.log10(255.0**2 * pixels / sse)


def tile_row(path: str, tile: tiling.Tile, number: int, stats: codec.TileStats, record: codec.TileRecord, reconstruction: Tensor) -> dict[str, Any]:
    """The Parquet row of tile ``number`` (row-major) of the image at ``path``, at ``tile`` in that image."""
    return {
        "path": path,
        "index": number,
        "top": tile.top,
        "left": tile.left,
        "height": tile.height,
        "width": tile.width,
        "z_height": record.z_shape[0],
        "z_width": record.z_shape[1],
        "strings": list(record.strings),
        "check": record.check,
        "lambdas": record.lambdas.to(torch.float16).flatten().tolist(),
        "num_bytes": stats.num_bytes,
        "record_sha256": digest(codec.pack_tile(record)),
        "bpp": 8.0 * stats.num_bytes / (tile.height * tile.width),
        "psnr_before": stats.psnr_before,
        "psnr_after": stats.psnr_after,
        "reconstruction_sha256": bytes.fromhex(pixels_sha256(reconstruction)),
    }


def image_row(source: str, path: str, source_bytes: int, source_sha256: str, header: codec.Header) -> dict[str, Any]:
    """The Parquet row of one image: where it came from (``source_sha256``: hex) and its whole-image
    codec ``header`` (format 3: with its source section's provenance and metadata blocks)."""
    s = header.source
    return {
        "source": source,
        "path": path,
        "source_bytes": source_bytes,
        "source_sha256": bytes.fromhex(source_sha256),
        "width": header.width,
        "height": header.height,
        "model": header.model,
        "fingerprint": header.fingerprint,
        "format_version": header.version,
        "quality": header.quality,
        "lmbda": header.lmbda,
        "tile_size": header.tile,
        "num_lambdas": header.num_lambdas,
        "metrics": list(header.metrics),
        "num_tiles": header.num_tiles,
        "header_sha256": digest(codec.pack_header(header)),
        "source_mtime": s.mtime if s else None,
        "source_format": s.format if s else None,
        "source_bits": s.bits if s else None,
        "source_sample_format": s.sample_format if s else None,
        "metadata": [{"kind": k, "data": d} for k, d in s.blocks] if s else None,
        "metadata_cut": list(s.cut) if s else None,
    }


def source_of(row: dict[str, Any]) -> codec.Source | None:
    """The source section an image row records (format 3 rows), else ``None``. Its name is the
    row's relative path, its size and SHA-256 the source's."""
    if row["format_version"] < codec.SOURCE_VERSION:
        return None
    return codec.Source(
        row["path"],
        row["source_bytes"],
        bytes.fromhex(row["source_sha256"]) if isinstance(row["source_sha256"], str) else bytes(row["source_sha256"]),
        row.get("source_mtime"),
        row.get("source_format") or "",
        row.get("source_bits") or 0,
        row.get("source_sample_format") or "",
        tuple((b["kind"], bytes(b["data"])) for b in row.get("metadata") or ()),
        tuple(row.get("metadata_cut") or ()),
    )


def header_of(row: dict[str, Any]) -> codec.Header:
    """The codec header an image row records."""
    return codec.Header(
        row["format_version"],
        row["model"],
        bytes(row["fingerprint"]),
        row["quality"],
        float(np.float32(row["lmbda"])),
        row["height"],
        row["width"],
        row["tile_size"],
        row["num_lambdas"],
        tuple(row["metrics"]),
        row["num_tiles"],
        source_of(row),
    )


def record_of(tile: dict[str, Any], header: codec.Header) -> codec.TileRecord:
    """The codec record a tile row holds (λ* reshaped to ``(S, K)``)."""
    shape = (len(header.metrics), header.num_lambdas)
    return codec.TileRecord(
        (tile["z_height"], tile["z_width"]),
        [bytes(s) for s in tile["strings"]],
        torch.from_numpy(np.asarray(tile["lambdas"], dtype=np.float16).reshape(shape)),
        tile.get("check"),
    )


def damage(image: dict[str, Any], tiles: Sequence[dict[str, Any]], whole: bool = True) -> str:
    """Why these rows cannot be (part of) the image's coded file, or ``""``: the header's and each
    tile record's SHA-256 must match the recorded ones, each tile be stored once, and, when the rows
    are the ``whole`` image, its tiles be exactly ``0 … n-1``."""
    header = header_of(image)
    if sha256(codec.pack_header(header)) != hex_of(image["header_sha256"]):
        return "archive record damaged: header checksum differs"
    numbers = sorted(t["index"] for t in tiles)
    expected = list(range(header.num_tiles)) if whole else sorted(set(numbers) & set(range(header.num_tiles)))
    if numbers != expected:
        return f"archive record damaged: {len(set(numbers))} distinct of {header.num_tiles} tiles stored ({len(numbers)} rows)"
    for t in tiles:
        if sha256(codec.pack_tile(record_of(t, header))) != hex_of(t["record_sha256"]):
            return f"archive record damaged: tile {t['index']} checksum differs"
    return ""


def coded_bytes(image: dict[str, Any], tiles: Sequence[dict[str, Any]]) -> bytes:
    """Rebuild the image's ``oml`` byte string (what ``oml compress`` writes) from its image row and
    all its tile rows (any order)."""
    header = header_of(image)
    ordered = sorted(tiles, key=lambda t: t["index"])
    if [t["index"] for t in ordered] != list(range(header.num_tiles)):
        raise ValueError(f"{image['path']}: {len(ordered)} tile rows for {header.num_tiles} tiles")
    return codec.write(header, [record_of(t, header) for t in ordered])


# Written without dictionary pages, statistics or the serialised Arrow schema: nothing reads them,
# every column's type reads back the same from the Parquet schema alone (tested), and in a unit of
# one small image they were a quarter of its files (docs/ARCHIVE.md, "Parquet schema").
_WRITE = {"compression": "zstd", "use_dictionary": False, "write_statistics": False, "store_schema": False}


def to_parquet(rows: list[dict[str, Any]], schema: pa.Schema) -> bytes:
    """Rows → the bytes of one Parquet file (zstd; deterministic for the same rows)."""
    table = pa.Table.from_pylist(rows, schema=schema)
    buf = io.BytesIO()
    pq.write_table(table, buf, **_WRITE)
    return buf.getvalue()


TILES_PER_GROUP = 8
"""Tile rows per Parquet row group of a tiles file: a window reads only the groups holding its
tiles. Each group costs about 2 KB (page headers and footer entries of 17 columns), so smaller
groups would cost more storage than they save reading (docs/ARCHIVE.md, "Reading a window")."""


class Span(NamedTuple):
    """Bytes ``offset … offset+length-1`` of a file, with their SHA-256; ``rows``: tile rows in a
    row group (0 for the footer)."""

    offset: int
    length: int
    sha256: str
    rows: int = 0


def tiles_parquet(rows: list[dict[str, Any]], table_schema: pa.Schema = TILE_SCHEMA) -> tuple[bytes, list[Span], Span]:
    """Tile rows → a Parquet file in row groups of :data:`TILES_PER_GROUP` rows, with the byte
    span and hash of each group and of the footer, which a reader of single groups checks."""
    table = pa.Table.from_pylist(rows, schema=table_schema)
    buf = io.BytesIO()
    pq.write_table(table, buf, row_group_size=TILES_PER_GROUP, **_WRITE)
    data = buf.getvalue()
    groups, footer = layout_of(data)
    return data, [Span(o, n, sha256(data[o : o + n]), r) for o, n, r in groups], Span(footer[0], footer[1], sha256(data[footer[0] :]))


def layout_of(data: bytes | bytearray) -> tuple[list[tuple[int, int, int]], tuple[int, int]]:
    """Where a Parquet file's row groups lie (offset, length, rows) and its footer (offset, length:
    the metadata, its length and the closing magic), read from the footer."""
    meta = pq.ParquetFile(pa.BufferReader(data)).metadata
    groups = []
    for g in range(meta.num_row_groups):
        group = meta.row_group(g)
        starts, ends = [], []
        for c in range(group.num_columns):
            col = group.column(c)
            start = col.dictionary_page_offset if col.has_dictionary_page else col.data_page_offset
            starts.append(start)
            ends.append(start + col.total_compressed_size)
        groups.append((min(starts), max(ends) - min(starts), group.num_rows))
    footer = len(data) - 8 - meta.serialized_size
    return groups, (footer, len(data) - footer)


def read_parquet(data: bytes, columns: list[str] | None = None) -> pa.Table:
    return pq.read_table(pa.BufferReader(data), columns=columns)
