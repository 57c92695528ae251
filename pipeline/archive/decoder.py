"""The worker side of decompression: one image's rows, gathered from the units that hold its tiles → a PNG file
(or, for a huge image, one band of its tile rows → that band's compressed PNG rows, which the driver writes in order)."""

from __future__ import annotations

import bisect
import dataclasses
import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import pyarrow as pa
import pyarrow.parquet as pq
import torch

from oml import codec, metadata, tiling
from oml.imageio import DEFAULT_MAX_PIXELS, ImageDecodeError, decode_image, encode_png
from oml.models.zoo import ModelUnavailableError, load_decoder
from pipeline import files, storage
from pipeline.archive import models as archive_models, pngstream, regions, schema
from pipeline.archive.config import ModelConfig
from pipeline.archive.encoder import get_model, one_entry


class DecodedImage(NamedTuple):
    """One restored image: ``status`` is ``ok``, ``failed`` or ``mismatch`` (verify found a difference)."""

    source: str
    path: str
    output: str
    status: str
    reason: str
    checks: dict[str, Any]
    band: tuple[int, pngstream.Band | None] | None = None  # a band of a banded restore: its number and PNG rows (None: failed)
    bytes_read: int = 0  # of the archive's tiles files, for this image (or band)
    sha256: str = ""  # of the restored file, when the task wrote it


class TileSource(NamedTuple):
    """Tiles ``first … first+count-1`` of an image, in unit ``unit``'s tiles file (``uri``, committed
    with ``size`` bytes and ``sha256``), where they are rows ``position …``; the file's row groups
    and footer as its marker records them (none in older archives)."""

    unit: int
    uri: str
    size: int
    sha256: str
    first: int
    count: int
    position: int = 0
    groups: tuple[schema.Span, ...] = ()
    footer: schema.Span | None = None


class DecodeJob(NamedTuple):
    """One image to restore: its image row, where its tiles are, the output URI, and an optional window.
    With ``band`` set, ``region`` is band number ``band`` (whole tile rows) of a banded restore: the
    task returns the band's compressed PNG rows instead of writing a file."""

    image: dict[str, Any]
    tiles: tuple[TileSource, ...]
    output: str
    region: tiling.Region | None = None
    band: int | None = None
    source_check: str = ""  # a band under --verify with --sources: SOURCE_OK when the driver found the source unchanged, else why not


_DECODERS: dict[tuple, Any] = {}


_MODEL_FOLDERS: dict[str, Any] = {}


def _archive_models(root: str | None) -> tuple[str, ...]:
    """The archive's own ``models/`` folder as a local folder (fetched once per process for a remote archive)."""
    if not root:
        return ()
    if root not in _MODEL_FOLDERS:
        _MODEL_FOLDERS[root] = archive_models.local_folder(root)
    return () if _MODEL_FOLDERS[root] is None else (str(_MODEL_FOLDERS[root]),)


def _decoder_for(cfg: ModelConfig, row: dict[str, Any], folders: tuple[str, ...] = ()) -> Any:
    """The model that decodes ``row``: with shipped weights, the shipped version its fingerprint
    names (:func:`oml.models.zoo.load_decoder`), found on the weights path with ``folders`` (the
    archive's own copies) on it; random test weights as the encoder built them."""
    quality = row["quality"] or 1
    if not cfg.pretrained and cfg.weights is None:
        return get_model(cfg, quality)
    fingerprint, version = bytes(row["fingerprint"]), int(row["format_version"])
    return one_entry(
        _DECODERS, (cfg, quality, fingerprint, version, folders), lambda: load_decoder(cfg.name, quality, fingerprint, version, weights=cfg.weights, folders=folders)
    )


class _Refused(Exception):
    """The image cannot be restored; the message is the one-line reason."""


_TABLES: dict[tuple[str, str], list[dict[str, Any]]] = {}  # the last unit files read here (images of a unit come in a row)


def read_tiles(src: TileSource, path: str, wanted: set[int] | None = None) -> tuple[list[dict[str, Any]], int]:
    """The rows of ``path``'s tiles in ``src`` (only the ``wanted`` numbers, if given), each read
    from bytes checked against the unit's marker, and how many bytes of the tiles file were read
    (0 when it was already here). With ``wanted`` and a marker that records the row groups, only the
    footer and the groups holding those tiles are read; otherwise the whole file."""
    end = src.first + src.count
    if wanted is not None and src.groups and src.footer is not None:
        positions = [src.position + i - src.first for i in wanted if src.first <= i < end]
        table, read = _read_groups(src, positions) if positions else ([], 0)
    else:
        table, read = _read_whole(src)
    return [r for r in table if r["path"] == path and src.first <= r["index"] < end and (wanted is None or r["index"] in wanted)], read


def _read_whole(src: TileSource) -> tuple[list[dict[str, Any]], int]:
    key = (src.uri, src.sha256)
    if key in _TABLES:
        return _TABLES[key], 0
    try:
        data = storage.read_bytes(src.uri)
    except OSError:
        raise _Refused(f"not restored: unit {src.unit}: its tiles Parquet file is missing; re-run compress to repair it") from None
    if len(data) != src.size or schema.sha256(data) != src.sha256:
        raise _Refused(f"not restored: unit {src.unit}: its tiles Parquet file is {len(data)} bytes, not the {src.size} committed, or another hash; re-run compress to repair it")
    table = _parse(src, lambda: schema.read_parquet(data))
    if len(_TABLES) >= 2:
        _TABLES.pop(next(iter(_TABLES)))
    _TABLES[key] = table
    return table, len(data)


def _read_groups(src: TileSource, positions: list[int]) -> tuple[list[dict[str, Any]], int]:
    """The rows of the row groups holding rows ``positions`` of the tiles file: its footer and those
    groups are read, each checked against the hash its marker recorded, into an otherwise empty
    buffer of the file's size, from which Parquet reads them."""
    starts = list(itertools.accumulate((g.rows for g in src.groups), initial=0))
    needed = sorted({bisect.bisect_right(starts, p) - 1 for p in positions})
    if needed[0] < 0 or needed[-1] >= len(src.groups):
        raise _Refused(f"not restored: unit {src.unit}: its marker's row groups do not hold its tiles (damaged or forged marker)")
    buf = bytearray(src.size)
    for span in (src.footer, *(src.groups[k] for k in needed)):
        try:
            data = storage.read_range(src.uri, span.offset, span.length)
        except OSError:
            raise _Refused(f"not restored: unit {src.unit}: its tiles Parquet file is missing; re-run compress to repair it") from None
        if len(data) != span.length or span.offset + span.length > src.size or schema.sha256(data) != span.sha256:
            raise _Refused(f"not restored: unit {src.unit}: bytes {span.offset}-{span.offset + span.length - 1} of its tiles Parquet file differ from those committed; re-run compress to repair it")
        buf[span.offset : span.offset + span.length] = data
    read = src.footer.length + sum(src.groups[k].length for k in needed)
    view = pa.py_buffer(buf)

    def parse() -> pa.Table:
        groups, _ = schema.layout_of(view)
        if groups != [(g.offset, g.length, g.rows) for g in src.groups]:
            raise ValueError("its row groups are not where its marker says")
        return pq.ParquetFile(pa.BufferReader(view)).read_row_groups(needed)

    return _parse(src, parse), read


def _parse(src: TileSource, read: Callable[[], pa.Table]) -> list[dict[str, Any]]:
    try:
        return read().to_pylist()
    except (OSError, ValueError) as exc:  # pyarrow's errors derive from these
        raise _Refused(f"not restored: unit {src.unit}: its tiles Parquet file cannot be read ({type(exc).__name__}: {exc})") from None


@dataclass(frozen=True)
class ImageDecoder:
    """Picklable callable run by a Ray task: restore one image (or a window of it) as a PNG file."""

    model: ModelConfig
    verify: bool = False
    metric: str | None = None
    psnr_tolerance: float = 0.01
    threads: int = 1
    sources: str | None = None
    overwrite: bool = False  # replace an existing output that holds other bytes (else: left, and the image failed)
    to_srgb: bool = False  # the archive converted sources' colours to sRGB (its plan's coding): a source is read the same way
    archive: str | None = None  # the archive's root: its models/ folder joins the weights path

    def __call__(self, job: DecodeJob) -> DecodedImage:
        torch.set_num_threads(self.threads)
        row = job.image
        read = 0  # bytes of tiles files read

        def result(status: str, reason: str = "", **checks: Any) -> DecodedImage:
            return DecodedImage(row["source"], row["path"], job.output, status, reason, checks, None if job.band is None else (job.band, None), read)

        try:
            cfg = dataclasses.replace(self.model, name=row["model"], download=False)  # never fetch what a row names
            model = _decoder_for(cfg, row, _archive_models(self.archive) if cfg.pretrained and cfg.weights is None else ())
            tiles, read = self._rows(job, None if job.region is None else self._overlapped(job))
            image = self._decode(model, job, tiles, self.metric)
        except _Refused as exc:
            return result("failed", str(exc))
        except (codec.CodecError, ValueError, ModelUnavailableError) as exc:
            return result("failed", f"cannot decode: {exc}")
        if job.band is None:
            source = schema.source_of(row)
            png = metadata.write_png(encode_png(image), source.blocks if source is not None else ())  # the source's metadata, back
            try:
                storage.write_bytes(job.output, png, replace=self.overwrite)
            except OSError as exc:
                if files.out_of_room(exc) or not files.is_local_failure(exc):
                    raise  # a full disk stops the run; the network, say, fails the task and Ray retries it
                return result("failed", f"not restored: {storage.explain(exc)}")  # a different file in the way, say
            done = self._verify(job, tiles, self._stored(model, job, image, tiles), result) if self.verify else result("ok")
            return done._replace(sha256=schema.sha256(png))
        band = (job.band, pngstream.encode_band(image.permute(1, 2, 0).numpy()))
        if not self.verify:
            return result("ok")._replace(band=band)
        return self._verify(job, tiles, self._stored(model, job, image, tiles), result)._replace(band=band)

    def _stored(self, model: Any, job: DecodeJob, image: torch.Tensor, tiles: list[dict[str, Any]]) -> torch.Tensor:
        """The pixels with the first stored λ* set, the one compression recorded hashes of."""
        header = schema.header_of(job.image)
        return image if codec.select_set(header, self.metric) == 0 else self._decode(model, job, tiles, None)

    @staticmethod
    def _overlapped(job: DecodeJob) -> set[int]:
        header = schema.header_of(job.image)
        return set(tiling.overlapping(tiling.tile_grid(header.height, header.width, header.tile), job.region))

    def _rows(self, job: DecodeJob, wanted: set[int] | None) -> tuple[list[dict[str, Any]], int]:
        """The image's tile rows (only the ``wanted`` ones, if given), checked, in tile order; and the bytes read."""
        tiles, read = [], 0
        for src in job.tiles:
            rows, n = read_tiles(src, job.image["path"], wanted)
            tiles += rows
            read += n
        why = schema.damage(job.image, tiles, whole=wanted is None)  # always: a damaged row must not restore as wrong pixels
        if why:
            raise _Refused(why)
        return sorted(tiles, key=lambda t: t["index"]), read

    @staticmethod
    def _decode(model: Any, job: DecodeJob, tiles: list[dict[str, Any]], metric: str | None) -> torch.Tensor:
        if job.region is None:
            return codec.decode(model, schema.coded_bytes(job.image, tiles), metric=metric)
        header = schema.header_of(job.image)
        return codec.decode_window(model, header, {t["index"]: schema.record_of(t, header) for t in tiles}, job.region, metric)

    def _verify(self, job: DecodeJob, tiles: list[dict[str, Any]], image: torch.Tensor, result: Callable[..., DecodedImage]) -> DecodedImage:
        """Compare with compression time, from the archive's own records: the records' hashes
        (checked before decoding), the symbols (format 2: every tile's check), each tile's
        reconstruction hash, and, when the user named a ``sources`` folder, the source file at the
        row's path there: its SHA-256 against the one recorded (a source changed since archiving is
        a mismatch) and each tile's PSNR against the recorded one (also against a changed source,
        when it still decodes to the same size, to say how far it moved). A row's ``source`` URI is
        never opened. A band of a banded restore (whole tile rows) checks its own tiles, against its
        rows of the source, streamed (the driver checked the source's hash once for all bands)."""
        row = job.image
        top = job.region.top if job.band is not None else 0
        grid = [tiling.Tile(t["top"] - top, t["left"], t["height"], t["width"]) for t in tiles]
        parts = tiling.split(image, grid)
        bit_exact = all(schema.pixels_sha256(p) == schema.hex_of(t["reconstruction_sha256"]) for p, t in zip(parts, tiles))
        if not bit_exact and row["format_version"] < 2:
            return result("mismatch", "reconstruction differs from compression time (format 1: no symbol check)", bit_exact=False)
        if self.sources is None:
            return result("ok", bit_exact=bit_exact, checks_source="no --sources given")
        original, why = self._source(job)
        checks: dict[str, Any] = {"bit_exact": bit_exact}
        problems = [why] if why == SOURCE_CHANGED else []
        if why:
            checks["checks_source"] = why
        if original is not None and tuple(original.shape[1:]) == tuple(image.shape[1:]):
            worst = psnr_error(parts, tiling.split(original, grid), [t["psnr_after"] for t in tiles])
            checks["max_psnr_error"] = worst
            if not (worst <= self.psnr_tolerance):  # NaN-safe: a NaN error is never within tolerance
                problems.append(f"PSNR differs from compression time by up to {worst:.4f} dB")
        if problems:
            return result("mismatch", "; ".join(problems), **checks)
        return result("ok", **checks)

    def _source(self, job: DecodeJob) -> tuple[torch.Tensor | None, str]:
        """The source's pixels under the job's image (or band), or ``None``; and ``""``, or why they
        are not the file archived (:data:`SOURCE_CHANGED`: then they are still given when they decode)
        or are not compared."""
        row = job.image
        try:
            uri = storage.join(self.sources, storage.safe_relative(row["path"]))
        except ValueError:
            return None, "source unavailable"
        if job.band is not None:
            if job.source_check not in (SOURCE_OK, SOURCE_CHANGED):
                return None, job.source_check or "source not checked"
            rect = tiling.Tile(job.region.top, 0, job.region.height, row["width"])
            changed = "" if job.source_check == SOURCE_OK else SOURCE_CHANGED
            try:
                pixels = regions.read_region(uri, rect, row["width"], row["height"])
            except (OSError, regions.RegionError) as exc:
                return None, changed or f"source unreadable: {exc}"
            return pixels, changed or ("" if pixels is not None else "the source cannot be read in bands (needs pyvips and an 8-bit sRGB PNG or JPEG): the bit-exact check stands")
        try:
            source = storage.read_bytes(uri)
        except OSError:
            return None, "source unavailable"
        changed = "" if schema.sha256(source) == schema.hex_of(row["source_sha256"]) else SOURCE_CHANGED
        try:
            return decode_image(source, max_pixels=max(DEFAULT_MAX_PIXELS, row["width"] * row["height"]), to_srgb=self.to_srgb), changed
        except ImageDecodeError as exc:
            return None, changed or f"source unreadable: {exc}"


class DecodeError(ValueError):
    """An archived image that cannot be read; the message names it and says why (the unit, the bytes)."""


def decode_pixels(model: ModelConfig, job: DecodeJob, metric: str | None = None, archive: str | None = None) -> torch.Tensor:
    """The uint8 ``(3, H, W)`` pixels of ``job``'s image (or of its ``region``), read and checked as a
    restore reads them (each tiles file's or row group's bytes against its marker, the header's and
    each record's SHA-256, the tiles present, each tile's symbols), without writing anything.
    Raises :class:`DecodeError`."""
    row = job.image
    decoder = ImageDecoder(model, metric=metric, archive=archive)
    try:
        cfg = dataclasses.replace(model, name=row["model"], download=False)  # never fetch what a row names
        net = _decoder_for(cfg, row, _archive_models(archive) if cfg.pretrained and cfg.weights is None else ())
        tiles, _ = decoder._rows(job, None if job.region is None else decoder._overlapped(job))
        return decoder._decode(net, job, tiles, metric)
    except _Refused as exc:
        raise DecodeError(f"{row['path']}: {str(exc).removeprefix('not restored: ')}") from None
    except (codec.CodecError, ValueError, ModelUnavailableError) as exc:
        raise DecodeError(f"{row['path']}: cannot decode: {exc}") from None


def psnr_error(parts: list[torch.Tensor], originals: list[torch.Tensor], recorded: list[float]) -> float:
    """The largest difference in dB between each tile's PSNR now (``parts`` against ``originals``)
    and the one ``recorded``: 0 where both are equal (both infinite: exact tiles), NaN when any
    value is NaN (a damaged record), so that a tolerance check ``error <= tolerance`` fails."""
    worst = 0.0
    for part, original, then in zip(parts, originals, recorded):
        now = schema.psnr(part, original)
        error = 0.0 if now == then else abs(now - then)
        if math.isnan(error):
            return math.nan
        worst = max(worst, error)
    return worst


SOURCE_OK = "ok"
SOURCE_CHANGED = "source changed since archiving (its SHA-256 differs from the one recorded)"


def check_source(sources: str, row: dict[str, Any]) -> str:
    """Whether the file at ``row``'s path under ``sources`` is the one compressed (its SHA-256,
    streamed): :data:`SOURCE_OK`, or why not. Run once per banded image, by the driver."""
    try:
        uri = storage.join(sources, storage.safe_relative(row["path"]))
        digest = storage.file_sha256(uri)
    except (OSError, ValueError):
        return "source unavailable"
    return SOURCE_OK if digest == schema.hex_of(row["source_sha256"]) else SOURCE_CHANGED
