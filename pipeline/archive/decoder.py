"""The worker side of decompression: one image's rows, gathered from the units that hold its tiles → a PNG file
(or, for a huge image, one band of its tile rows → that band's compressed PNG rows, which the driver writes in order)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch

from oml import codec, tiling
from oml.imageio import DEFAULT_MAX_PIXELS, decode_image, encode_png
from oml.models.zoo import ModelUnavailableError, load_decoder
from pipeline import pngstream, schema, storage
from pipeline.archive.config import ModelConfig
from pipeline.archive.encoder import get_model


class DecodedImage(NamedTuple):
    """One restored image: ``status`` is ``ok``, ``failed`` or ``mismatch`` (verify found a difference)."""

    source: str
    path: str
    output: str
    status: str
    reason: str
    checks: dict[str, Any]
    band: tuple[int, pngstream.Band | None] | None = None  # a band of a banded restore: its number and PNG rows (None: failed)


class TileSource(NamedTuple):
    """Tiles ``first … first+count-1`` of an image, in unit ``unit``'s tiles file (``uri``, committed
    with ``size`` bytes and ``sha256``)."""

    unit: int
    uri: str
    size: int
    sha256: str
    first: int
    count: int


class DecodeJob(NamedTuple):
    """One image to restore: its image row, where its tiles are, the output URI, and an optional window.
    With ``band`` set, ``region`` is band number ``band`` (whole tile rows) of a banded restore: the
    task returns the band's compressed PNG rows instead of writing a file."""

    image: dict[str, Any]
    tiles: tuple[TileSource, ...]
    output: str
    region: tiling.Region | None = None
    band: int | None = None


_DECODERS: dict[tuple, Any] = {}


def _decoder_for(cfg: ModelConfig, row: dict[str, Any]) -> Any:
    """The model that decodes ``row``: with shipped weights, the shipped version its fingerprint
    names (:func:`oml.models.zoo.load_decoder`); random test weights as the encoder built them."""
    quality = row["quality"] or 1
    if not cfg.pretrained and cfg.weights is None:
        return get_model(cfg, quality)
    key = (cfg, quality, bytes(row["fingerprint"]), int(row["format_version"]))
    if key not in _DECODERS:
        _DECODERS.clear()  # one model kept per worker, as get_model does
        _DECODERS[key] = load_decoder(cfg.name, quality, key[2], key[3], weights=cfg.weights)
    return _DECODERS[key]


class _Refused(Exception):
    """The image cannot be restored; the message is the one-line reason."""


_TABLES: dict[tuple[str, str], list[dict[str, Any]]] = {}  # the last unit files read here (images of a unit come in a row)


def read_tiles(src: TileSource, path: str, wanted: set[int] | None = None) -> list[dict[str, Any]]:
    """The rows of ``path``'s tiles in ``src`` (only the ``wanted`` numbers, if given), after checking
    the file is the one its unit committed."""
    key = (src.uri, src.sha256)
    if key not in _TABLES:
        try:
            data = storage.read_bytes(src.uri)
        except OSError:
            raise _Refused(f"not restored: unit {src.unit}: its tiles Parquet file is missing; re-run compress to repair it") from None
        if len(data) != src.size or schema.sha256(data) != src.sha256:
            raise _Refused(f"not restored: unit {src.unit}: its tiles Parquet file is {len(data)} bytes, not the {src.size} committed, or another hash; re-run compress to repair it")
        try:
            table = schema.read_parquet(data).to_pylist()
        except (OSError, ValueError) as exc:  # pyarrow's errors derive from these
            raise _Refused(f"not restored: unit {src.unit}: its tiles Parquet file cannot be read ({type(exc).__name__}: {exc})") from None
        if len(_TABLES) >= 2:
            _TABLES.pop(next(iter(_TABLES)))
        _TABLES[key] = table
    end = src.first + src.count
    return [r for r in _TABLES[key] if r["path"] == path and src.first <= r["index"] < end and (wanted is None or r["index"] in wanted)]


@dataclass(frozen=True)
class ImageDecoder:
    """Picklable callable run by a Ray task: restore one image (or a window of it) as a PNG file."""

    model: ModelConfig
    verify: bool = False
    metric: str | None = None
    psnr_tolerance: float = 0.01
    threads: int = 1
    sources: str | None = None

    def __call__(self, job: DecodeJob) -> DecodedImage:
        torch.set_num_threads(self.threads)
        row = job.image

        def result(status: str, reason: str = "", **checks: Any) -> DecodedImage:
            return DecodedImage(row["source"], row["path"], job.output, status, reason, checks, None if job.band is None else (job.band, None))

        try:
            model = _decoder_for(dataclasses.replace(self.model, name=row["model"], download=False), row)  # never fetch what a row names
            if job.region is None:
                image, tiles = self._whole(model, job)
            else:
                image, tiles = self._window(model, job)
        except _Refused as exc:
            return result("failed", str(exc))
        except (codec.CodecError, ValueError, ModelUnavailableError) as exc:
            return result("failed", f"cannot decode: {exc}")
        if job.band is None:
            storage.write_bytes(job.output, encode_png(image))
            return self._verify(row, tiles, self._stored(model, job, image, tiles), result) if self.verify else result("ok")
        band = (job.band, pngstream.encode_band(image.permute(1, 2, 0).numpy()))
        if not self.verify:
            return result("ok")._replace(band=band)
        return self._verify(row, tiles, self._stored(model, job, image, tiles), result, job.region)._replace(band=band)

    def _stored(self, model: Any, job: DecodeJob, image: torch.Tensor, tiles: list[dict[str, Any]]) -> torch.Tensor:
        """The pixels with the first stored λ* set, the one compression recorded hashes of."""
        header = schema.header_of(job.image)
        if codec.select_set(header, self.metric) == 0:
            return image
        if job.region is None:
            return codec.decode(model, schema.coded_bytes(job.image, tiles))
        return codec.decode_window(model, header, {t["index"]: schema.record_of(t, header) for t in tiles}, job.region, None)

    def _rows(self, job: DecodeJob, wanted: set[int] | None) -> list[dict[str, Any]]:
        tiles = [t for src in job.tiles for t in read_tiles(src, job.image["path"], wanted)]
        why = schema.damage(job.image, tiles, whole=wanted is None)  # always: a damaged row must not restore as wrong pixels
        if why:
            raise _Refused(why)
        return tiles

    def _whole(self, model: Any, job: DecodeJob) -> tuple[torch.Tensor, list[dict[str, Any]]]:
        tiles = self._rows(job, None)
        return codec.decode(model, schema.coded_bytes(job.image, tiles), metric=self.metric), sorted(tiles, key=lambda t: t["index"])

    def _window(self, model: Any, job: DecodeJob) -> tuple[torch.Tensor, list[dict[str, Any]]]:
        header = schema.header_of(job.image)
        wanted = set(tiling.overlapping(tiling.tile_grid(header.height, header.width, header.tile), job.region))
        tiles = self._rows(job, wanted)
        image = codec.decode_window(model, header, {t["index"]: schema.record_of(t, header) for t in tiles}, job.region, self.metric)
        return image, sorted(tiles, key=lambda t: t["index"])

    def _verify(
        self, row: dict[str, Any], tiles: list[dict[str, Any]], image: torch.Tensor, result: Callable[..., DecodedImage],
        band: tiling.Region | None = None,
    ) -> DecodedImage:
        """Compare with compression time, from the archive's own records: the records' hashes
        (checked before decoding), the symbols (format 2: every tile's check), each tile's
        reconstruction hash, and, when the user named a ``sources`` folder, PSNR against the
        source file at the row's path there. A row's ``source`` URI is never opened. A ``band`` of
        a banded restore (whole tile rows) checks its own tiles; PSNR against the source is left to
        the bit-exact check there, as hashing the whole source once per band would cost more than
        the restore."""
        top = band.top if band is not None else 0
        grid = [tiling.Tile(t["top"] - top, t["left"], t["height"], t["width"]) for t in tiles]
        parts = tiling.split(image, grid)
        bit_exact = all(schema.pixels_sha256(p) == t["reconstruction_sha256"] for p, t in zip(parts, tiles))
        if not bit_exact and row["format_version"] < 2:
            return result("mismatch", "reconstruction differs from compression time (format 1: no symbol check)", bit_exact=False)
        if self.sources is None:
            return result("ok", bit_exact=bit_exact, checks_source="no --sources given")
        if band is not None:
            return result("ok", bit_exact=bit_exact, checks_source="restored in bands: the bit-exact check stands for PSNR")
        try:
            source = storage.read_bytes(storage.join(self.sources, storage.safe_relative(row["path"])))
        except (OSError, ValueError):
            source = None
        if source is None or schema.sha256(source) != row["source_sha256"]:
            why = "source unavailable" if source is None else "source changed since compression"
            return result("ok", checks_source=why, bit_exact=bit_exact)
        original = decode_image(source, max_pixels=max(DEFAULT_MAX_PIXELS, row["width"] * row["height"]))
        errors = [abs(schema.psnr(p, o) - t["psnr_after"]) for p, o, t in zip(parts, tiling.split(original, grid), tiles)]
        worst = max(0.0 if math.isnan(e) else e for e in errors)  # NaN: both PSNRs are inf (exact tiles)
        if worst > self.psnr_tolerance:
            reason = f"PSNR differs from compression time by up to {worst:.4f} dB"
            return result("mismatch", reason, bit_exact=bit_exact, max_psnr_error=worst)
        return result("ok", bit_exact=bit_exact, max_psnr_error=worst)
