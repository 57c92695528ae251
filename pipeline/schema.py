"""The archive's Parquet schema: one row per image, one nested struct per tile.

A row holds everything needed to rebuild the image's ``oml`` byte string
(:func:`coded_bytes`) without the source: the codec header's fields at image
level and each tile's latent strings and λ* values. Checksums and PSNR values
recorded at compression time let a later decompression verify itself.
The full field list, with units, is in ``docs/ARCHIVE.md``.
"""

from __future__ import annotations

import hashlib
import io
import math
from typing import Any

import numpy as np
import torch
from torch import Tensor

from oml import codec, metrics, tiling

try:
    import pyarrow as pa
    import pyarrow.parquet as pq
except ImportError as exc:  # pragma: no cover - depends on the installation
    raise ImportError("the archiving pipeline needs pyarrow: pip install 'oml-archive[pipeline]'") from exc

SCHEMA_VERSION = "2"

TILE_TYPE = pa.struct(
    [
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
        ("bpp", pa.float64()),
        ("psnr_before", pa.float64()),
        ("psnr_after", pa.float64()),
        ("reconstruction_sha256", pa.string()),
    ]
)

SCHEMA = pa.schema(
    [
        ("source", pa.string()),
        ("path", pa.string()),
        ("source_bytes", pa.int64()),
        ("source_sha256", pa.string()),
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
        ("coded_bytes", pa.int64()),
        ("coded_sha256", pa.string()),
        ("bpp", pa.float64()),
        ("psnr_before", pa.float64()),
        ("psnr_after", pa.float64()),
        ("tiles", pa.list_(TILE_TYPE)),
    ],
    metadata={"oml-archive-schema": SCHEMA_VERSION},
)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def pixels_sha256(image: Tensor) -> str:
    """SHA-256 of a uint8 ``(3, h, w)`` image's bytes in C order."""
    return sha256(image.cpu().contiguous().numpy().tobytes())


def psnr(a: Tensor, b: Tensor) -> float:
    """PSNR in dB of two uint8 images (``inf`` when equal), computed as :mod:`oml.codec` reports it."""
    return float(metrics.psnr(a, b))


def mean_psnr(psnrs: list[float], pixels: list[int]) -> float:
    """Image PSNR in dB from per-tile PSNRs: the pixel-weighted mean of the tiles' MSE."""
    sse = sum(n * (0.0 if math.isinf(p) else 255.0**2 / 10 ** (p / 10)) for p, n in zip(psnrs, pixels))
    mse = sse / sum(pixels)
    return float("inf") if mse == 0 else 10.0 * math.log10(255.0**2 / mse)


def tile_row(stats: codec.TileStats, record: codec.TileRecord, reconstruction: Tensor) -> dict[str, Any]:
    """The Parquet struct of one coded tile."""
    t = stats.tile
    return {
        "top": t.top,
        "left": t.left,
        "height": t.height,
        "width": t.width,
        "z_height": record.z_shape[0],
        "z_width": record.z_shape[1],
        "strings": list(record.strings),
        "check": record.check,
        "lambdas": record.lambdas.to(torch.float16).flatten().tolist(),
        "num_bytes": stats.num_bytes,
        "bpp": 8.0 * stats.num_bytes / (t.height * t.width),
        "psnr_before": stats.psnr_before,
        "psnr_after": stats.psnr_after,
        "reconstruction_sha256": pixels_sha256(reconstruction),
    }


def image_row(source: str, path: str, data: bytes, header: codec.Header, coded: bytes, tiles: list[dict]) -> dict[str, Any]:
    """The Parquet row of one coded image; ``header`` is the whole image's, ``coded`` its ``oml`` bytes."""
    pixels = [t["height"] * t["width"] for t in tiles]
    return {
        "source": source,
        "path": path,
        "source_bytes": len(data),
        "source_sha256": sha256(data),
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
        "coded_bytes": len(coded),
        "coded_sha256": sha256(coded),
        "bpp": 8.0 * len(coded) / (header.width * header.height),
        "psnr_before": mean_psnr([t["psnr_before"] for t in tiles], pixels),
        "psnr_after": mean_psnr([t["psnr_after"] for t in tiles], pixels),
        "tiles": tiles,
    }


def header_of(row: dict[str, Any]) -> codec.Header:
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
        len(row["tiles"]),
    )


def coded_bytes(row: dict[str, Any]) -> bytes:
    """Rebuild the image's ``oml`` byte string (what ``oml compress`` would have written) from its row."""
    header = header_of(row)
    shape = (len(header.metrics), header.num_lambdas)
    records = [
        codec.TileRecord(
            (t["z_height"], t["z_width"]),
            [bytes(s) for s in t["strings"]],
            torch.from_numpy(np.asarray(t["lambdas"], dtype=np.float16).reshape(shape)),
            t.get("check"),
        )
        for t in row["tiles"]
    ]
    return codec.write(header, records)


def tile_grid(row: dict[str, Any]) -> list[tiling.Tile]:
    return [tiling.Tile(t["top"], t["left"], t["height"], t["width"]) for t in row["tiles"]]


def to_parquet(rows: list[dict[str, Any]]) -> bytes:
    """Rows → the bytes of one Parquet file (zstd; deterministic for the same rows)."""
    table = pa.Table.from_pylist(rows, schema=SCHEMA)
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    return buf.getvalue()


def read_parquet(data: bytes, columns: list[str] | None = None) -> pa.Table:
    return pq.read_table(pa.BufferReader(data), columns=columns)
