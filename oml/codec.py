"""One image ⇄ one self-describing byte string.

Layout (little-endian)::

    header   magic "OMLC" | format version u8 | model id (u8 length + UTF-8)
             | weights fingerprint 8 bytes | quality u8 (0 = continuous λ) | λ_t f32
             | height u32 | width u32 | tile size u16 | K u8
             | number of λ* sets S u8, each its metric name (u8 length + ASCII)
             | number of tiles u32
             | source section (format 3 only; see below)
    tiles    per tile: z height u16 | z width u16 | strings u8, each (u32 length + bytes)
             | symbol check u32 (format 2) | S·K λ* values float16
    trailer  CRC-32 of everything before it, u32

Source section (format 3): what the image was coded from, and its metadata blocks verbatim
(:mod:`oml.metadata`)::

    SHA-256 of the source's bytes 32 bytes | source size u64 | modification time f64 (seconds
    since 1970-01-01 UTC; NaN: unknown) | declared bits per sample u8 | sample format u8
    (0 unknown, 1 unsigned integer, 2 signed integer, 3 float) | image format (u8 length + ASCII)
    | source name (u16 length + UTF-8) | number of cut kinds u8, each (u8 length + ASCII)
    | number of blocks u16, each: kind (u8 length + ASCII) | length u32 | bytes

A file is written in format 3 only when it carries this section; without it, format 2 as before.
docs/FORMAT.md is the full specification.

Tiles follow :func:`oml.tiling.tile_grid` (row-major, at most ``tile size``²).
Each λ* set is one receiver choice (paper §4): ``plain`` (λ* = λ_t, no
adaptation), ``psnr`` or ``ms-ssim``. The decoder runs the synthesis once per
tile, with the chosen set.

Format 2 (this build writes it) decodes to the same latent symbols on every
machine: the entropy parameters are computed in exact integer arithmetic
(:mod:`oml.models.exact`) from tables stored in the weights file, and each tile
carries a CRC-32 of its symbols (``symbol check``) that every decoder verifies;
a mismatch raises :class:`DesyncError` naming the tile. Reconstructions may
still differ by one grey level between machines (the synthesis is float32).
Format 1 files (no symbol check, float hyper-decoder) still decode, with a
:class:`PortabilityWarning`: on a machine whose float results differ from the
encoder's they can come back wrong, and nothing can detect it.
"""

from __future__ import annotations

import struct
import warnings
import zlib
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from oml import tiling
from oml.adapt import LAMBDA_MAX, LAMBDA_MIN, AdaptConfig, adapt, distortion
from oml.quick import adapt_quick
from oml.metrics import psnr
from oml.models.latent import LatentCode
from oml.models.variable_rate import VariableRateModel
from oml.names import PLAIN
from oml.refine import RefineConfig, distortion_weight, rd_cost, refine

MAGIC = b"OMLC"
FORMAT_VERSION = 2  # written for an image without a source section
SOURCE_VERSION = 3  # written for an image with one (provenance and metadata blocks)
READABLE_VERSIONS = (1, 2, 3)
SAMPLE_FORMATS = ("", "uint", "int", "float")  # the source section's sample format codes 0…3


class CodecError(ValueError):
    """Bytes that cannot be decoded here; the message says why."""


class DesyncError(CodecError):
    """A tile's decoded symbols do not match the encoder's (damaged stream or desynchronised decoder)."""


class PortabilityWarning(UserWarning):
    """A format-1 file: its symbols are only certain to decode on a machine with the encoder's float results."""


@dataclass(frozen=True)
class Source:
    """What an image was coded from (format 3's source section): the source's name (a relative
    path), size in bytes, SHA-256 (32 bytes), modification time (seconds since the epoch, ``None``
    when unknown), format (``PNG``, ``JPEG``…), declared bits per sample and sample format
    (:data:`SAMPLE_FORMATS`), its metadata ``blocks`` ``(kind, bytes)`` verbatim, and the kinds
    the size bound ``cut``."""

    name: str
    size: int
    sha256: bytes
    mtime: float | None
    format: str
    bits: int
    sample_format: str
    blocks: tuple[tuple[str, bytes], ...] = ()
    cut: tuple[str, ...] = ()


@dataclass(frozen=True)
class Header:
    """Everything about a coded image except its tiles (``source``: format 3 only)."""

    version: int
    model: str
    fingerprint: bytes
    quality: int
    lmbda: float
    height: int
    width: int
    tile: int
    num_lambdas: int
    metrics: tuple[str, ...]
    num_tiles: int
    source: Source | None = None


class TileRecord(NamedTuple):
    """One coded tile: z's shape, the entropy-coded strings, λ* ``(S, K)`` float16 and the CRC-32
    of its latent symbols (``None`` in format 1)."""

    z_shape: tuple[int, int]
    strings: list[bytes]
    lambdas: Tensor
    check: int | None = None


class TileStats(NamedTuple):
    """Per tile: position, coded bytes (strings + λ*), PSNR (dB) at λ_t and with the first λ* set, and
    whether latent refinement changed its latent."""

    tile: tiling.Tile
    num_bytes: int
    psnr_before: float
    psnr_after: float
    refined: bool = False


class Encoded(NamedTuple):
    """The byte string, the decoder's reconstruction (first λ* set) uint8 ``(3,H,W)``, per-tile stats."""

    data: bytes
    reconstruction: Tensor
    tiles: list[TileStats]


# --------------------------------------------------------------------------- bytes


def _pack_str(s: str) -> bytes:
    raw = s.encode()
    if len(raw) > 255:
        raise ValueError(f"name too long for the header: {s!r}")
    return struct.pack("<B", len(raw)) + raw


def pack_header(h: Header) -> bytes:
    if (h.source is not None) != (h.version >= SOURCE_VERSION):
        raise ValueError(f"format {h.version} {'needs a' if h.version >= SOURCE_VERSION else 'carries no'} source section")
    out = [MAGIC, struct.pack("<B", h.version), _pack_str(h.model), h.fingerprint]
    out.append(struct.pack("<BfIIHB", h.quality, h.lmbda, h.height, h.width, h.tile, h.num_lambdas))
    out.append(struct.pack("<B", len(h.metrics)))
    out.extend(_pack_str(m) for m in h.metrics)
    out.append(struct.pack("<I", h.num_tiles))
    if h.source is not None:
        out.append(pack_source(h.source))
    return b"".join(out)


def _ascii(s: str) -> bytes:
    raw = s.encode("ascii")
    if len(raw) > 255:
        raise ValueError(f"name too long for the header: {s!r}")
    return struct.pack("<B", len(raw)) + raw


def pack_source(s: Source) -> bytes:
    """The source section's bytes (format 3)."""
    if len(s.sha256) != 32 or s.sample_format not in SAMPLE_FORMATS or not 0 <= s.bits <= 255 or len(s.cut) > 255 or len(s.blocks) > 65535:
        raise ValueError(f"source section out of range: {s.sha256.hex()}, {s.bits} {s.sample_format!r}, {len(s.cut)} cut, {len(s.blocks)} blocks")
    name = s.name.encode()[:65535]
    out = [s.sha256, struct.pack("<QdBB", s.size, float("nan") if s.mtime is None else s.mtime, s.bits, SAMPLE_FORMATS.index(s.sample_format))]
    out += [_ascii(s.format), struct.pack("<H", len(name)), name, struct.pack("<B", len(s.cut)), *map(_ascii, s.cut)]
    out.append(struct.pack("<H", len(s.blocks)))
    for kind, data in s.blocks:
        out += [_ascii(kind), struct.pack("<I", len(data)), data]
    return b"".join(out)


def pack_tile(t: TileRecord) -> bytes:
    out = [struct.pack("<HHB", *t.z_shape, len(t.strings))]
    for s in t.strings:
        out += [struct.pack("<I", len(s)), s]
    if t.check is not None:
        out.append(struct.pack("<I", t.check))
    out.append(t.lambdas.to(torch.float16).contiguous().numpy().astype("<f2").tobytes())
    return b"".join(out)


class _Reader:
    def __init__(self, data: bytes, offset: int = 0) -> None:
        self.data, self.pos = data, offset

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise CodecError("truncated data: the byte string ends early")
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def unpack(self, fmt: str) -> tuple:
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))

    def string(self, length: str = "<B", encoding: str = "utf-8") -> str:
        (n,) = self.unpack(length)
        try:
            return self.take(n).decode(encoding)
        except UnicodeDecodeError:
            raise CodecError(f"damaged header: a name is not valid {encoding.upper()}") from None


def _read_source(r: _Reader) -> Source:
    sha = r.take(32)
    size, mtime, bits, sample = r.unpack("<QdBB")
    if sample >= len(SAMPLE_FORMATS):
        raise CodecError(f"damaged header: sample format {sample}")
    fmt = r.string(encoding="ascii")
    name = r.string("<H")
    cut = tuple(r.string(encoding="ascii") for _ in range(r.unpack("<B")[0]))
    blocks = []
    for _ in range(r.unpack("<H")[0]):
        kind = r.string(encoding="ascii")
        blocks.append((kind, r.take(r.unpack("<I")[0])))
    return Source(name, size, sha, None if mtime != mtime else mtime, fmt, bits, SAMPLE_FORMATS[sample], tuple(blocks), cut)


def _read_header(r: _Reader) -> Header:
    if r.take(4) != MAGIC:
        raise CodecError("not an oml-coded image (bad magic bytes)")
    (version,) = r.unpack("<B")
    _check_version(version)
    model = r.string()
    fingerprint = r.take(8)
    quality, lmbda, height, width, tile, k = r.unpack("<BfIIHB")
    (num_sets,) = r.unpack("<B")
    metrics = tuple(r.string() for _ in range(num_sets))
    (num_tiles,) = r.unpack("<I")
    source = _read_source(r) if version >= SOURCE_VERSION else None
    return Header(version, model, fingerprint, quality, lmbda, height, width, tile, k, metrics, num_tiles, source)


def _check_version(version: int) -> None:
    if version not in READABLE_VERSIONS:
        raise CodecError(f"format version {version} is not supported; this build reads versions {', '.join(map(str, READABLE_VERSIONS))}")


def _read_tile(r: _Reader, version: int, num_sets: int, k: int) -> TileRecord:
    zh, zw, n = r.unpack("<HHB")
    strings = [r.take(r.unpack("<I")[0]) for _ in range(n)]
    check = r.unpack("<I")[0] if version >= 2 else None
    lam = np.frombuffer(r.take(2 * num_sets * k), dtype="<f2").astype(np.float16)
    return TileRecord((zh, zw), strings, torch.from_numpy(lam.copy()).view(num_sets, k), check)


def _verified(data: bytes) -> bytes:
    if len(data) < 4 or data[:4] != MAGIC:
        raise CodecError("not an oml-coded image (bad magic bytes)")
    if len(data) < 9:
        raise CodecError("truncated data: the byte string ends early")
    _check_version(data[4])
    body, (crc,) = data[:-4], struct.unpack("<I", data[-4:])
    if zlib.crc32(body) != crc:
        raise CodecError("damaged data: checksum mismatch")
    return body


def read_header(data: bytes) -> Header:
    """The header of a coded image, after checking magic, version and checksum."""
    return _read_header(_Reader(_verified(data)))


MAX_LAMBDAS = 64


def _check_header(h: Header, remaining: int) -> None:
    """Bounds on every header field, before anything is allocated from them (a forged header with
    a valid checksum must cost no more than its own bytes)."""
    try:
        tiling.check_tile_size(h.tile)
    except ValueError as exc:
        raise CodecError(f"damaged header: {exc}") from None
    if h.height < 1 or h.width < 1:
        raise CodecError(f"damaged header: image size {h.width}x{h.height}")
    if not 1 <= h.num_lambdas <= MAX_LAMBDAS or not h.metrics or len(set(h.metrics)) != len(h.metrics):
        raise CodecError(f"damaged header: K={h.num_lambdas}, λ* sets {list(h.metrics)}")
    expected = -(-h.height // h.tile) * -(-h.width // h.tile)
    if h.num_tiles != expected:
        raise CodecError(f"damaged header: {h.num_tiles} tiles for a {h.width}x{h.height} image (expected {expected})")
    smallest = 5 + (4 if h.version >= 2 else 0) + 2 * len(h.metrics) * h.num_lambdas
    if h.num_tiles * smallest > remaining:
        raise CodecError(f"damaged data: {h.num_tiles} tiles cannot fit in {remaining} bytes")


# The λ range the encoder writes (adapt clamps to it before rounding), as float16 values.
_LAMBDA_LOW16, _LAMBDA_HIGH16 = torch.tensor([LAMBDA_MIN, LAMBDA_MAX]).half().tolist()


def _check_lambdas(lambdas: Tensor, number: int) -> None:
    """Every stored λ* is a float16 the encoder can write: finite, in [LAMBDA_MIN, LAMBDA_MAX] as float16."""
    values = lambdas.float()
    outside = ~((values >= _LAMBDA_LOW16) & (values <= _LAMBDA_HIGH16))  # NaN fails both comparisons
    if bool(outside.any()):
        bad = values[outside][0].item()
        raise CodecError(f"damaged data: tile {number} stores λ* = {bad}, outside [{_LAMBDA_LOW16:g}, {_LAMBDA_HIGH16:g}]")


def read(data: bytes) -> tuple[Header, list[TileRecord]]:
    """Parse and verify a whole coded image: checksum, header bounds, every tile's z shape."""
    r = _Reader(_verified(data))
    header = _read_header(r)
    _check_header(header, len(r.data) - r.pos)
    tiles = []
    for number, tile in enumerate(tiling.tile_grid(header.height, header.width, header.tile)):
        rec = _read_tile(r, header.version, len(header.metrics), header.num_lambdas)
        expected = tuple(side // tiling.MULTIPLE for side in tiling.padded_size(tile.height, tile.width))
        if rec.z_shape != expected or len(rec.strings) != 2:
            raise CodecError(f"damaged data: tile {number} has z shape {rec.z_shape} and {len(rec.strings)} strings (expected {expected} and 2)")
        _check_lambdas(rec.lambdas, number)
        tiles.append(rec)
    if r.pos != len(r.data):
        raise CodecError(f"damaged data: {len(r.data) - r.pos} unexpected trailing bytes")
    return header, tiles


def write(header: Header, tiles: list[TileRecord]) -> bytes:
    if any((t.check is None) != (header.version < 2) for t in tiles):
        raise ValueError(f"format {header.version} tiles {'carry no' if header.version < 2 else 'need a'} symbol check")
    body = pack_header(header) + b"".join(pack_tile(t) for t in tiles)
    return body + struct.pack("<I", zlib.crc32(body))


# --------------------------------------------------------------------------- coding


def _to_float(tile: Tensor) -> Tensor:
    return tile.float().div(255.0).unsqueeze(0)


def _to_uint8(x: Tensor) -> Tensor:
    return (x.clamp(0, 1) * 255.0).round().to(torch.uint8)


@torch.no_grad()
def reconstruct_tile(model: VariableRateModel, y_hat: Tensor, lambdas: Tensor, lmbda_t: float, tile: tiling.Tile) -> Tensor:
    """The decoder's output for one tile: ŷ ``(1,M,h,w)``, λ* ``(K,)`` → uint8 ``(3, tile.height, tile.width)`` on the CPU.

    Encoder and decoder both call this, so their reconstructions are identical.

    Raises:
        CodecError: the decoder's output is not finite (λ* far off the coding range, which the
            encoder never writes: casting NaN to uint8 differs between CPUs).
    """
    x_hat = model.synthesize(y_hat, lambdas.float().unsqueeze(0).to(y_hat.device), lmbda_t)
    return _tile_pixels(x_hat, lambdas, tile)


def _tile_pixels(x_hat: Tensor, lambdas: Tensor, tile: tiling.Tile) -> Tensor:
    """The decoder's float output ``(1,3,H',W')`` → its uint8 pixels ``(3, tile.height, tile.width)`` on the CPU."""
    if not bool(torch.isfinite(x_hat).all()):
        raise CodecError(f"the decoder's output is not finite with λ* {[float(v) for v in lambdas]}")
    return _to_uint8(tiling.crop(x_hat, tile.height, tile.width)[0]).cpu()


@torch.no_grad()
def _plain_tile(model: VariableRateModel, y_hat: Tensor, lmbda_t: float, tile: tiling.Tile, keep: bool) -> tuple[Tensor, list[Tensor] | None]:
    """:func:`reconstruct_tile` at λ* = λ_t, with, when ``keep``, every decoding block's output (the same
    operations: quick adaptation decodes its candidates exactly from them)."""
    lam_t = plain_lambdas(model.num_lambdas, lmbda_t)
    if not keep:
        return reconstruct_tile(model, y_hat, lam_t, lmbda_t, tile), None
    synthesis, coded = model.synthesis, torch.full((1,), lmbda_t, device=y_hat.device)
    kept, x_hat = synthesis.block_outputs(synthesis.prefix(y_hat, coded), lam_t.float().unsqueeze(0).to(y_hat.device), coded)
    return _tile_pixels(x_hat, lam_t, tile), kept


def plain_lambdas(k: int, lmbda_t: float) -> Tensor:
    """The λ* of no adaptation: λ_t for each of the K modulators, as float16 (how λ* is stored)."""
    return torch.full((k,), lmbda_t).half()


def _check_image(image: Tensor) -> None:
    if image.dtype != torch.uint8 or image.dim() != 3 or image.shape[0] != 3:
        raise ValueError(f"expected a uint8 RGB image of shape (3, H, W), got {image.dtype} {tuple(image.shape)}")


class _TileWork(NamedTuple):
    tile: tiling.Tile
    pixels: Tensor  # uint8 (3, h, w), CPU
    x: Tensor  # float (1, 3, h, w) on the model's device
    code: LatentCode
    plain: Tensor  # uint8 reconstruction at λ* = λ_t
    refined: bool = False  # whether the latent is the refined one
    kept: list[Tensor] | None = None  # the plain decoding's block outputs, for quick adaptation


def encode(
    model: VariableRateModel,
    image: Tensor,
    *,
    quality: int | None = None,
    lmbda: float | None = None,
    adapt_config: AdaptConfig = AdaptConfig(),
    tile_size: int = tiling.TILE,
    tile_batch: int | None = None,
    refine_config: RefineConfig = RefineConfig(),
    source: Source | None = None,
) -> Encoded:
    """Code a uint8 image ``(3, H, W)`` at a quality or λ, adapting λ* per tile.

    With ``source`` the file carries the source section (format 3); without, it is format 2.

    Without adaptation (``adapt_config.enabled`` false) one ``plain`` λ* set (λ* = λ_t) is stored;
    otherwise one set per metric. No λ* set is ever worse than λ_t for its
    metric on the 8-bit reconstruction: a tile whose search found nothing
    better keeps λ_t.

    With ``refine_config.iterations > 0`` each tile's latent is first refined
    (:mod:`oml.refine`, for the first metric) and kept only where that lowers
    the tile's exact RD cost; the λ* search then runs on the kept latent.

    Tiles are processed ``tile_batch`` at a time (default 8 on a GPU, 1 on a
    CPU); equally sized tiles of a batch are adapted together. Memory stays
    bounded by the batch, whatever the image size.
    """
    _check_image(image)
    tiling.check_tile_size(tile_size)
    with ieee_float32():
        enc = _encode(model, image, quality, lmbda, adapt_config, tile_size, tile_batch, refine_config)
    return enc if source is None else enc._replace(data=with_source(enc.data, source))


def with_source(data: bytes, source: Source | None) -> bytes:
    """A coded image's bytes with ``source`` as its source section (format 3), or none (format 2);
    the tiles are the same bytes either way."""
    header, records = read(data)
    version = SOURCE_VERSION if source is not None else FORMAT_VERSION if header.version >= 2 else header.version
    return write(replace(header, version=version, source=source), records)


def _encode(
    model: VariableRateModel,
    image: Tensor,
    quality: int | None,
    lmbda: float | None,
    adapt_config: AdaptConfig,
    tile_size: int,
    tile_batch: int | None,
    refine_config: RefineConfig,
) -> Encoded:
    q, lmbda_t = model.resolve(quality, lmbda)
    lmbda_t = float(np.float32(lmbda_t))  # exactly the value the header carries
    device = model.device
    height, width = image.shape[1:]
    grid = tiling.tile_grid(height, width, tile_size)
    metrics = adapt_config.metrics if adapt_config.enabled else (PLAIN,)
    k = model.num_lambdas
    batch = tile_batch or (8 if device.type == "cuda" else 1)
    records, stats = [], []
    reconstruction = torch.empty((3, height, width), dtype=torch.uint8)
    tiles = list(zip(grid, tiling.split(image, grid)))
    for start in range(0, len(tiles), batch):
        work = _code_tiles(model, q, lmbda_t, tiles[start : start + batch], refine_config, adapt_config.metrics[0], adapt_config.quick)
        sets = [_adapt_batch(model, work, lmbda_t, m, adapt_config) for m in metrics]
        for i, w in enumerate(work):
            chosen = torch.stack([s[i].lambdas for s in sets])
            recon = sets[0][i].reconstruction  # what the decoder shows by default: the first set's
            record = TileRecord(w.code.z_shape, w.code.strings, chosen, w.code.check)
            records.append(record)
            stats.append(TileStats(w.tile, len(pack_tile(record)), float(psnr(w.plain, w.pixels)), float(psnr(recon, w.pixels)), w.refined))
            tiling.split(reconstruction, [w.tile])[0].copy_(recon)
    header = Header(FORMAT_VERSION, model.name, model.fingerprint(q), q, lmbda_t, height, width, tile_size, k, metrics, len(grid))
    return Encoded(write(header, records), reconstruction, stats)


def _groups(tiles: list[tiling.Tile]) -> list[list[int]]:
    """Indexes of equally sized tiles, which can be processed as one batch."""
    groups: dict[tuple[int, int], list[int]] = {}
    for i, t in enumerate(tiles):
        groups.setdefault((t.height, t.width), []).append(i)
    return list(groups.values())


def _code_tiles(
    model: VariableRateModel, q: int, lmbda_t: float, tiles: list[tuple[tiling.Tile, Tensor]], refine_config: RefineConfig, metric: str,
    keep: bool = False,
) -> list[_TileWork]:
    """Analysis, optional latent refinement and entropy coding of a batch of tiles.

    A refined tile keeps its refined latent only if that lowers its exact RD cost
    (:func:`oml.refine.rd_cost` on the coded bytes and the 8-bit output at λ_t), so refinement
    never makes a tile worse.
    """
    coder = model.latent_codec(q)
    work: list[_TileWork | None] = [None] * len(tiles)
    for members in _groups([t for t, _ in tiles]):
        x = torch.cat([_to_float(tiles[i][1]) for i in members]).to(model.device)
        with torch.no_grad():
            y = model.analyze(tiling.pad(x), q, lmbda_t)
        for row, i in enumerate(members):
            tile, pixels = tiles[i]
            code = coder.encode(y[row : row + 1])
            recon, kept = _plain_tile(model, code.y_hat, lmbda_t, tile, keep)
            work[i] = _TileWork(tile, pixels, x[row : row + 1], code, recon, kept=kept)
        if refine_config.iterations == 0:
            continue
        plain = torch.cat([_to_float(work[i].plain) for i in members]).to(x.device)
        weight = distortion_weight(metric, plain, x)
        y_ref, z_ref, _ = refine(model, q, lmbda_t, x, y, refine_config, metric, weight)
        for row, i in enumerate(members):
            w = work[i]
            code = coder.encode(y_ref[row : row + 1], z_ref[row : row + 1])
            recon, kept = _plain_tile(model, code.y_hat, lmbda_t, w.tile, keep)
            exact = [_exact_cost(metric, weight[row : row + 1], lmbda_t, r, w.x, c) for r, c in ((recon, code), (w.plain, w.code))]
            if exact[0] < exact[1]:
                work[i] = w._replace(code=code, plain=recon, refined=True, kept=kept)
    return work


def _exact_cost(metric: str, weight: Tensor, lmbda_t: float, recon: Tensor, x: Tensor, code: LatentCode) -> float:
    """A tile's RD cost on what the file holds: its latent strings' bits and the decoder's 8-bit output."""
    bits = torch.tensor([8.0 * sum(map(len, code.strings))], device=x.device)
    return float(rd_cost(metric, weight, lmbda_t, _to_float(recon).to(x.device), x, bits))


class _Choice(NamedTuple):
    """A tile's λ* ``(K,)`` float16 for one metric and the decoder's uint8 output with it."""

    lambdas: Tensor
    reconstruction: Tensor


def _adapt_batch(model: VariableRateModel, work: list[_TileWork], lmbda_t: float, metric: str, cfg: AdaptConfig) -> list[_Choice]:
    """λ* per tile for one metric, with the reconstruction already decoded for it (the synthesis is
    the encoder's dearest part); a tile keeps λ_t unless its decoded output improves."""
    lam_t = plain_lambdas(model.num_lambdas, lmbda_t)
    found = [_Choice(lam_t, w.plain) for w in work]
    if metric == PLAIN:
        return found
    if cfg.quick:
        for i, w in enumerate(work):
            result = adapt_quick(model.synthesis, w.kept, w.x, lmbda_t, metric)
            candidate = result.lambdas.cpu().half()
            if not torch.equal(candidate, lam_t):
                try:
                    found[i] = _keep_better(w, candidate, _tile_pixels(result.output, candidate, w.tile), lam_t, metric)
                except CodecError:
                    pass
        return found
    for members in _groups([w.tile for w in work]):
        y_hat = torch.cat([work[i].code.y_hat for i in members])
        with torch.no_grad():
            h = model.synthesis.prefix(y_hat, torch.full((len(members),), lmbda_t, device=y_hat.device))
        x = torch.cat([work[i].x for i in members])
        result = adapt(model.synthesis, h, x, lmbda_t, cfg.steps, metric, cfg.gammas)
        for row, i in enumerate(members):
            found[i] = _accept(model, work[i], result.lambdas[row].cpu(), lam_t, lmbda_t, metric)
    return found


def _accept(model: VariableRateModel, w: _TileWork, candidate: Tensor, lam_t: Tensor, lmbda_t: float, metric: str) -> _Choice:
    """Re-score on the exact decoder path (batch 1, 8-bit output) before accepting ``candidate``."""
    try:
        recon = reconstruct_tile(model, w.code.y_hat, candidate, lmbda_t, w.tile)
    except CodecError:
        return _Choice(lam_t, w.plain)
    return _keep_better(w, candidate, recon, lam_t, metric)


def _keep_better(w: _TileWork, candidate: Tensor, recon: Tensor, lam_t: Tensor, metric: str) -> _Choice:
    """``candidate`` with its decoded pixels ``recon`` if they beat λ_t's for ``metric``, else λ_t."""
    with torch.no_grad():
        pixels = w.pixels.float().div(255).unsqueeze(0)
        d_new = distortion(metric, _to_float(recon), pixels)
        d_old = distortion(metric, _to_float(w.plain), pixels)
    return _Choice(candidate, recon) if bool(d_new < d_old) else _Choice(lam_t, w.plain)


def check_model(model: VariableRateModel, header: Header) -> None:
    """Raise :class:`CodecError` unless ``model`` is the one that coded ``header``."""
    if header.model != model.name:
        raise CodecError(f"coded with model {header.model!r}, not {model.name!r}")
    if header.num_lambdas != model.num_lambdas:
        raise CodecError(f"coded with K={header.num_lambdas} modulators, this model has {model.num_lambdas}")
    if header.quality != 0 and header.quality not in model.lambdas:
        raise CodecError(f"coded at quality {header.quality}, outside this model's group {sorted(model.lambdas)}")
    expected = model.fingerprint(header.quality, header.version)
    if header.fingerprint != expected:
        raise CodecError(
            f"coded with other weights of {header.model} (fingerprint {header.fingerprint.hex()}, "
            f"this decoder has {expected.hex()})"
        )


def decode(model: VariableRateModel, data: bytes, metric: str | None = None, max_pixels: int | None = None) -> Tensor:
    """Bytes → uint8 image ``(3, H, W)``, with the λ* set of ``metric`` (default: the first).

    Raises:
        CodecError: damaged or forged data, another model, or more than ``max_pixels`` pixels.
        DesyncError: a tile's decoded symbols do not match its stored check.
    """
    header, records = read(data)
    if max_pixels is not None and header.height * header.width > max_pixels:
        raise CodecError(f"{header.width}x{header.height} is over the limit of {max_pixels} pixels (raise it with --max-pixels)")
    _warn_if_format1(header)
    return decode_window(model, header, dict(enumerate(records)), tiling.Region(0, 0, header.width, header.height), metric)


def _warn_if_format1(header: Header) -> None:
    if header.version < 2:
        warnings.warn(
            "format 1 file: decoded with the float hyper-decoder; on a machine whose float results differ from "
            "the encoder's it can come back wrong undetected (re-encode to format 2)",
            PortabilityWarning,
            stacklevel=3,
        )


def decode_tile_latent(model: VariableRateModel, header: Header, rec: TileRecord, number: int, tile: tiling.Tile) -> Tensor:
    """ŷ ``(1, M, h, w)`` of one tile record; raises :class:`DesyncError` when its symbol check fails."""
    if header.version < 2:
        return model.decode_latent_float(rec.strings, rec.z_shape, header.quality)
    y_hat, check = model.decode_latent(rec.strings, rec.z_shape, header.quality)
    if check != rec.check:
        raise DesyncError(
            f"desync in tile {number} (top {tile.top}, left {tile.left}): the decoded symbols do not match "
            f"the encoder's (check {check:08x}, stored {rec.check:08x}); the latent data is damaged"
        )
    return y_hat


@contextmanager
def ieee_float32() -> Iterator[None]:
    """Plain float32 convolutions and matmuls while coding.

    cuDNN convolutions default to TF32 (a 10-bit mantissa) on Ampere and later GPUs; a GPU
    encoder's reconstruction would then differ from a CPU decoder's by several grey levels.
    """
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def select_set(header: Header, metric: str | None) -> int | None:
    """Index of the λ* set for ``metric`` (``None``: the first); ``None`` for ``plain`` in a file
    that stores only adapted sets (plain decoding needs no stored set: λ* = λ_t)."""
    if metric is None:
        return 0
    if metric == PLAIN and PLAIN not in header.metrics:
        return None
    if metric not in header.metrics:
        raise CodecError(f"no λ* set for {metric!r} in this file; it has {', '.join(header.metrics)}")
    return header.metrics.index(metric)


def decode_window(
    model: VariableRateModel, header: Header, records: Mapping[int, TileRecord], region: tiling.Region, metric: str | None = None
) -> Tensor:
    """The pixels of ``region`` only: uint8 ``(3, region.height, region.width)``, decoding just the
    tiles it overlaps (``records`` maps tile numbers to records and needs only those).

    :func:`decode` is this function over the whole image, so a window equals the same window of a
    full decode.

    Raises:
        CodecError: a region outside the image, a missing tile record, another model, a desync.
    """
    try:
        tiling.check_region(region, header.height, header.width)
    except ValueError as exc:
        raise CodecError(str(exc)) from None
    check_model(model, header)
    index = select_set(header, metric)
    grid = tiling.tile_grid(header.height, header.width, header.tile)
    window = torch.empty((3, region.height, region.width), dtype=torch.uint8)
    with ieee_float32():
        for number in tiling.overlapping(grid, region):
            if number not in records:
                raise CodecError(f"tile {number} is missing")
            tile, rec = grid[number], records[number]
            y_hat = decode_tile_latent(model, header, rec, number, tile)
            lambdas = rec.lambdas[index] if index is not None else plain_lambdas(header.num_lambdas, header.lmbda)
            pixels = reconstruct_tile(model, y_hat.to(model.device), lambdas, header.lmbda, tile)
            top, left = max(tile.top, region.top), max(tile.left, region.left)
            bottom = min(tile.top + tile.height, region.top + region.height)
            right = min(tile.left + tile.width, region.left + region.width)
            window[:, top - region.top : bottom - region.top, left - region.left : right - region.left] = pixels[
                :, top - tile.top : bottom - tile.top, left - tile.left : right - tile.left
            ]
    return window


def decode_region(model: VariableRateModel, data: bytes, region: tiling.Region, metric: str | None = None) -> Tensor:
    """Bytes → the uint8 pixels ``(3, h, w)`` of ``region`` (:func:`decode_window`); the whole byte
    string is still checked (CRC-32, header bounds), only the overlapped tiles are decoded."""
    header, records = read(data)
    _warn_if_format1(header)
    return decode_window(model, header, dict(enumerate(records)), region, metric)
