"""The worker side of compression: one unit of tiles → its two Parquet files and its done marker.

The model is built once per worker process (:func:`get_model`) and reused by its next units.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import Tensor

from oml import codec, metadata, ratecontrol, tiling
from oml.imageio import ImageDecodeError, decode_image
from oml.models.variable_rate import VariableRateModel
from oml.models.zoo import load_model, quality_group
from pipeline.archive import regions, schema, webdataset
from pipeline import storage
from pipeline.archive.config import CodingConfig, ModelConfig
from pipeline.archive.layout import PieceResult, UnitResult, unit_uri
from pipeline.archive.plan import PERMANENT_READ_ERRORS, Failure, Piece, PlannedImage, Unit, changed_source, sha256_of

_MODEL_CACHE: dict[tuple, VariableRateModel] = {}


def one_entry(cache: dict, key: Any, build: Callable[[], Any]) -> Any:
    """``cache[key]``, built by ``build`` when missing; the cache keeps one entry, so a worker
    process holds one model however many it is asked for in turn."""
    if key not in cache:
        cache.clear()
        cache[key] = build()
    return cache[key]


def get_model(cfg: ModelConfig, quality: int, device: str = "cpu") -> VariableRateModel:
    """The model for ``quality``'s group, built once per process (:func:`one_entry`)."""

    def build() -> VariableRateModel:
        if not cfg.pretrained and cfg.weights is None:
            torch.manual_seed(cfg.seed)  # random weights: identical on every worker
        return load_model(cfg.name, quality, weights=cfg.weights, pretrained=cfg.pretrained, download=cfg.download).to(device)

    return one_entry(_MODEL_CACHE, (cfg, quality_group(cfg.name, quality), device), build)


def device_for(gpus: float) -> str:
    """A worker given a GPU by Ray runs the transforms there (entropy coding stays on the CPU)."""
    return "cuda" if gpus > 0 and torch.cuda.is_available() else "cpu"


class CodedTile(NamedTuple):
    """One coded tile of an image: its number (row-major), position, stats, record and reconstruction."""

    number: int
    tile: tiling.Tile
    stats: codec.TileStats
    record: codec.TileRecord
    reconstruction: Tensor


def encode_rect(model: VariableRateModel, crop: Tensor, coding: CodingConfig, rect: tiling.Tile, height: int, width: int) -> tuple[codec.Header, list[CodedTile]]:
    """Code ``crop`` ``(3, rect.height, rect.width)``, the rectangle ``rect`` (on the tile grid,
    :func:`oml.tiling.tile_range_rects`) of a ``height``×``width`` image: the whole image's header and
    the coded tiles, numbered and placed in the whole image.

    One :func:`oml.codec.encode` call on the crop, so tiles are batched on a GPU as the codec
    chooses, and each tile is coded exactly as in a whole-image encode (tiles are independent).
    """
    if coding.target is not None:
        enc = ratecontrol.encode_to_target(model, crop, ratecontrol.Target(*coding.target), coding.adapt, coding.tile, refine_config=coding.search).encoded
    elif coding.lmbda is not None:
        enc = codec.encode(model, crop, lmbda=coding.lmbda, adapt_config=coding.adapt, tile_size=coding.tile, refine_config=coding.search)
    else:
        enc = codec.encode(model, crop, quality=coding.quality, adapt_config=coding.adapt, tile_size=coding.tile, refine_config=coding.search)
    header, records = codec.read(enc.data)
    cols = tiling.grid_shape(height, width, coding.tile)[1]
    coded = []
    for stats, record, pixels in zip(enc.tiles, records, tiling.split(enc.reconstruction, [s.tile for s in enc.tiles])):
        t = stats.tile._replace(top=stats.tile.top + rect.top, left=stats.tile.left + rect.left)
        coded.append(CodedTile(t.top // coding.tile * cols + t.left // coding.tile, t, stats, record, pixels))
    whole = dataclasses.replace(header, height=height, width=width, num_tiles=len(tiling.tile_grid(height, width, coding.tile)))
    return whole, coded


@dataclass(frozen=True)
class UnitEncoder:
    """Picklable callable run by a Ray task: one unit → its tiles and images Parquet files, then its marker.

    ``fingerprint`` (hex) is the driver's model fingerprint: a worker whose weights differ
    refuses to code rather than mix models in one archive. Likewise each piece's source must hash
    to the SHA-256 the plan recorded (when it records one): a source edited since planning is a
    failure of that image, so a resumed archive never holds tiles of two versions of it.
    """

    output: str
    model: ModelConfig
    coding: CodingConfig
    fingerprint: str
    threads: int = 1
    gpus: float = 0.0

    def __call__(self, unit: Unit) -> UnitResult:
        torch.set_num_threads(self.threads)
        model = get_model(self.model, self.coding.quality, device_for(self.gpus))
        if model.fingerprint(self.coding.quality).hex() != self.fingerprint:
            raise RuntimeError(
                f"this worker's {self.model.name} weights (fingerprint {model.fingerprint(self.coding.quality).hex()}) "
                f"differ from the archive's ({self.fingerprint}); install the same weights on every node"
            )
        seconds = {"read": 0.0, "decode": 0.0, "code": 0.0, "write": 0.0}
        tiles, images, pieces, failures = [], [], [], []
        for piece in unit.pieces:
            try:
                piece_tiles, image_row, result = self._piece(model, piece, _Clock(seconds))
            except _Failed as exc:
                failures.append(Failure(piece.image.source, piece.image.path, str(exc)))
                continue
            tiles += piece_tiles
            images += [image_row] if image_row else []
            pieces.append(result)
        with _Clock(seconds)("write"):
            samples = any(webdataset.is_member(p.image.source) for p in unit.pieces)  # WebDataset shards: rows with key and sidecars
            images_schema = schema.SAMPLE_IMAGE_SCHEMA if samples else schema.IMAGE_SCHEMA
            (tiles_file, groups, footer), images_file = schema.tiles_parquet(tiles), schema.to_parquet(images, images_schema)
            storage.write_bytes(unit_uri(self.output, unit.index, "tiles"), tiles_file)
            storage.write_bytes(unit_uri(self.output, unit.index, "images"), images_file)
        result = UnitResult(
            index=unit.index,
            pieces=tuple(pieces),
            failures=tuple(failures),
            seconds={k: round(v, 4) for k, v in seconds.items()},
            tiles_bytes=len(tiles_file),
            tiles_sha256=schema.sha256(tiles_file),
            images_bytes=len(images_file),
            images_sha256=schema.sha256(images_file),
            tiles_groups=tuple(groups),
            tiles_footer=footer,
        )
        storage.write_json(unit_uri(self.output, unit.index, "done"), result.to_json())  # the commit, always last
        return result

    def _piece(self, model: VariableRateModel, piece: Piece, clock: _Clock) -> tuple[list[dict], dict | None, PieceResult]:
        """One piece → its tile rows, the image row (when it holds tile 0) and its stats; raises
        :class:`_Failed` with the one-line reason the input cannot be archived."""
        im = piece.image
        rects = tiling.tile_range_rects(im.height, im.width, self.coding.tile, piece.first, piece.count)
        band, pixels, size, digest, data = self._read(im, _bounds(rects), clock)
        header, coded = None, []
        with clock("code"):
            try:
                for r in rects:
                    crop = pixels[:, r.top - band.top : r.top - band.top + r.height, r.left - band.left : r.left - band.left + r.width]
                    header, tiles = encode_rect(model, crop, self.coding, r, im.height, im.width)
                    coded += tiles
            except (ValueError, codec.CodecError) as exc:
                raise _Failed(f"cannot code: {exc}") from None
        rows = [schema.tile_row(im.path, c.tile, c.number, c.stats, c.record, c.reconstruction) for c in coded]
        if piece.first == 0:  # the image row: the source section (provenance, metadata blocks) makes it format 3
            header = dataclasses.replace(header, version=codec.SOURCE_VERSION, source=self._source(im, data, size, digest))
        image_row = schema.image_row(im.source, im.path, size, digest, header) if piece.first == 0 else None
        if image_row is not None and webdataset.is_member(im.source):
            try:
                image_row["key"], image_row["sidecars"] = webdataset.sample_of(im.source)
            except PERMANENT_READ_ERRORS as exc:
                raise _Failed(f"cannot read its sample: {type(exc).__name__}: {exc}") from None
        result = PieceResult(
            im.path,
            piece.first,
            piece.count,
            len(codec.pack_header(header)) if image_row else 0,
            sum(c.stats.num_bytes for c in coded),
            sum(schema.squared_error(c.stats.psnr_before, c.tile.height * c.tile.width) for c in coded),
            sum(schema.squared_error(c.stats.psnr_after, c.tile.height * c.tile.width) for c in coded),
            tuple(header.source.cut) if image_row and header.source is not None else (),
        )
        return rows, image_row, result

    def _source(self, im: PlannedImage, data: bytes | None, size: int, digest: str) -> codec.Source:
        """The image's source section, from its bytes; when its pixels were streamed (``data`` is
        ``None``), from its bytes without the pixel data (:func:`oml.metadata.without_pixels`), so
        memory still follows the band, with the size and SHA-256 the streamed read hashed."""
        try:
            if data is None:
                with storage.open_file(im.source) as stream:
                    data = metadata.without_pixels(stream)
            return metadata.source_of(
                data, im.path, storage.mtime(im.source), self.coding.to_srgb, self.coding.metadata_limit, size, bytes.fromhex(digest)
            )
        except PERMANENT_READ_ERRORS as exc:
            raise _Failed(f"cannot read: {type(exc).__name__}: {exc}") from None
        except ImageDecodeError as exc:
            raise _Failed(str(exc)) from None

    def _read(self, im: PlannedImage, band: tiling.Tile, clock: _Clock) -> tuple[tiling.Tile, Tensor, int, str, bytes | None]:
        """The pixels of ``band`` (streamed by :mod:`pipeline.archive.regions` where it can, so memory follows the
        band, not the image), else of the whole image decoded by Pillow, with their position; and the
        size and SHA-256 of the source's bytes they were decoded from, checked against the plan's."""
        try:
            with clock("decode"):
                streamed = regions.read_region_hashed(im.source, band, im.width, im.height)
            if streamed is not None:
                self._check_unchanged(im, streamed.sha256)
                return band, streamed.pixels, streamed.size, streamed.sha256, None
            with clock("read"):
                data = storage.read_bytes(im.source)
                size, digest = len(data), schema.sha256(data)
            self._check_unchanged(im, digest)
            with clock("decode"):
                image = decode_image(data, max_pixels=self.coding.max_pixels, to_srgb=self.coding.to_srgb)
        except PERMANENT_READ_ERRORS as exc:
            raise _Failed(f"cannot read: {type(exc).__name__}: {exc}") from None
        except (ImageDecodeError, regions.RegionError) as exc:
            self._check_unchanged(im, None)  # a source edited into a broken file: say it changed
            raise _Failed(str(exc)) from None
        if tuple(image.shape[1:]) != (im.height, im.width):
            raise _Failed(f"decoded as {image.shape[2]}x{image.shape[1]}, not the {im.width}x{im.height} its header said when planned")
        return tiling.Tile(0, 0, im.height, im.width), image, size, digest, data

    @staticmethod
    def _check_unchanged(im: PlannedImage, digest: str | None) -> None:
        """:class:`_Failed` when the source's bytes (``digest``; ``None``: hash the file now) are not
        the ones the plan hashed. Plans written before sources were hashed record none: no check."""
        if not im.sha256:
            return
        if digest is None:
            try:
                with storage.open_file(im.source) as stream:
                    digest = sha256_of(stream)[1]
            except PERMANENT_READ_ERRORS:
                return
        if digest != im.sha256:
            raise _Failed(changed_source(im.path, digest, im.sha256))


def _bounds(rects: list[tiling.Tile]) -> tiling.Tile:
    """The smallest rectangle holding ``rects``."""
    top, left = min(r.top for r in rects), min(r.left for r in rects)
    bottom, right = max(r.top + r.height for r in rects), max(r.left + r.width for r in rects)
    return tiling.Tile(top, left, bottom - top, right - left)


class _Failed(Exception):
    """An input that cannot be archived; the message is the one-line reason."""


class _Clock:
    """``with clock("stage"):`` adds the block's wall time to ``seconds["stage"]``."""

    def __init__(self, seconds: dict[str, float]) -> None:
        self.seconds = seconds

    @contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[stage] = self.seconds.get(stage, 0.0) + time.perf_counter() - start
