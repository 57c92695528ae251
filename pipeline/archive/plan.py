"""The plan of an archive: every input's size from its header and the SHA-256 of its bytes, cut into units of roughly equal tile counts.

The sorted listing is read header by header (no pixels decoded) and each input is hashed
(streamed, in pieces), each image's tiles are laid end to end in row-major order, image
after image, and the sequence is cut every ``unit`` tiles: a huge image spreads over many
units (so over every worker), small images are grouped, and unit ``i`` always holds the
same tiles. ``plan.json`` records the settings, the listing's checksum and each image's
size and SHA-256; a re-run reuses the recorded sizes, so the units never change under an
archive, and every worker checks that the bytes it codes are the planned ones, so a
resumed archive never mixes two versions of a source.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, NamedTuple

from oml import tiling
from oml.imageio import ImageDecodeError, check_pixels, read_header
from pipeline import storage
from pipeline.archive.config import CodingConfig, CompressConfig

PLAN_FORMAT = "oml-archive-plan/2"

# Reading a source can fail for good (the file is gone or unreadable: recorded
# as a failed input) or for a while (network, throttling: the job fails and is re-run).
PERMANENT_READ_ERRORS = (FileNotFoundError, IsADirectoryError, PermissionError)


class Failure(NamedTuple):
    """An input that could not be archived, and why (one line)."""

    source: str
    path: str
    reason: str


class PlannedImage(NamedTuple):
    """An input that will be coded: its URI, relative path, size (after EXIF orientation) and the
    SHA-256 of its bytes when planned (hex; empty in plans written before sources were hashed), and
    what the input policy changes on the way in (``notes``: a bit depth reduced, colours converted)."""

    source: str
    path: str
    width: int
    height: int
    sha256: str = ""
    notes: tuple[str, ...] = ()


class Piece(NamedTuple):
    """Tiles ``first … first+count-1`` (row-major) of one image, coded by one unit."""

    image: PlannedImage
    first: int
    count: int


class Unit(NamedTuple):
    """Unit ``index``: the pieces of the images it codes, in listing order."""

    index: int
    pieces: tuple[Piece, ...]

    @property
    def tiles(self) -> int:
        return sum(p.count for p in self.pieces)


def num_tiles(image: PlannedImage, tile: int) -> int:
    rows, cols = tiling.grid_shape(image.height, image.width, tile)
    return rows * cols


def unit_size(total_tiles: int, unit_tiles: int, min_units: int, min_unit_tiles: int | None = None) -> int:
    """Tiles per unit: ``unit_tiles``, or fewer so that a small collection still makes up to
    ``min_units`` units for the workers to share. With ``min_unit_tiles``, that split makes a power
    of two of units (they divide evenly among 2, 4, 8 … workers) of at least ``min_unit_tiles``
    tiles each; ``None`` is the rule of plans written before the floor (no power of two, no floor)."""
    if min_unit_tiles is None:
        return max(1, min(unit_tiles, -(-total_tiles // min_units)))
    units = max(1, min(min_units, total_tiles // min_unit_tiles))
    units = 1 << (units.bit_length() - 1)  # the largest power of two not above it
    return max(1, min(unit_tiles, -(-total_tiles // units)))


def make_units(
    images: Sequence[PlannedImage], tile: int, unit_tiles: int, min_units: int = 1, whole_images: bool = False, min_unit_tiles: int | None = None
) -> list[Unit]:
    """Cut the images' tiles, laid end to end, every :func:`unit_size` tiles; with
    ``whole_images`` cut only between images (a unit then holds at least that many tiles)."""
    size = unit_size(sum(num_tiles(im, tile) for im in images), unit_tiles, min_units, min_unit_tiles)
    units: list[Unit] = []
    pieces: list[Piece] = []
    filled = 0
    for image in images:
        n, first = num_tiles(image, tile), 0
        while first < n:
            take = n - first if whole_images else min(n - first, size - filled)
            pieces.append(Piece(image, first, take))
            filled, first = filled + take, first + take
            if filled >= size:
                units.append(Unit(len(units), tuple(pieces)))
                pieces, filled = [], 0
    if pieces:
        units.append(Unit(len(units), tuple(pieces)))
    return units


HASH_CHUNK = 1 << 20  # bytes read at a time to hash a source: memory stays flat whatever its size


def sha256_of(stream: Any, chunk: int = HASH_CHUNK) -> tuple[int, str]:
    """Size and SHA-256 (hex) of the bytes of ``stream`` from its current position to its end, read in pieces."""
    digest, size = hashlib.sha256(), 0
    while piece := stream.read(chunk):
        digest.update(piece)
        size += len(piece)
    return size, digest.hexdigest()


def changed_source(path: str, now: str, planned: str) -> str:
    """The one-line reason a source whose bytes are no longer the planned ones is not coded."""
    return (
        f"{path} changed since the archive was planned (SHA-256 {now[:16]}…, planned {planned[:16]}…); "
        "archive it into a new output"
    )


def probe(f: storage.SourceFile, max_pixels: int, to_srgb: bool = False) -> PlannedImage | Failure:
    """One input's size from its header (a few KiB read) and the SHA-256 of all its bytes
    (streamed through the same open file), or why it cannot be archived (the input policy's
    refusals included: a colour profile that is not sRGB without ``to_srgb``…)."""
    try:
        if f.size == 0:
            raise ImageDecodeError("empty file")
        with storage.open_file(f.uri) as stream:
            width, height, notes = read_header(stream, to_srgb)
            check_pixels(width, height, max_pixels)
            stream.seek(0)
            _, digest = sha256_of(stream)
    except PERMANENT_READ_ERRORS as exc:
        return Failure(f.uri, f.relative_path, f"cannot read: {type(exc).__name__}: {exc}")
    except ImageDecodeError as exc:
        return Failure(f.uri, f.relative_path, str(exc))
    return PlannedImage(f.uri, f.relative_path, width, height, digest, notes)


def probe_all(files: Sequence[storage.SourceFile], max_pixels: int, to_srgb: bool = False) -> list[PlannedImage | Failure]:
    """:func:`probe` on every file, several at once (remote reads are round trips)."""
    with ThreadPoolExecutor(max_workers=16) as pool:
        return list(pool.map(lambda f: probe(f, max_pixels, to_srgb), files))


def listing_sha256(files: Sequence[storage.SourceFile]) -> str:
    digest = hashlib.sha256()
    for f in files:
        digest.update(f"{f.relative_path}\0{f.size}\n".encode())
    return digest.hexdigest()


def settings(cfg: CompressConfig, files: Sequence[storage.SourceFile], fingerprint: str) -> dict[str, Any]:
    """What a re-run must share with the run that started the archive."""
    return {
        "format": PLAN_FORMAT,
        "input": storage.redact(storage.normalize(cfg.input)),
        "model": dataclasses.asdict(cfg.model),
        # options left unset are left out, so archives started before they existed still resume
        "coding": _options(cfg.coding),
        "fingerprint": fingerprint,
        "extensions": sorted(e.lower() for e in cfg.extensions),
        "unit_tiles": cfg.unit_tiles,
        "min_units": cfg.min_units,
        "min_unit_tiles": cfg.min_unit_tiles,
        "files": len(files),
        "listing_sha256": listing_sha256(files),
    }


def _options(coding: CodingConfig) -> dict[str, Any]:
    """The coding options that are set (not ``None``; flags only when on)."""
    return {k: v for k, v in dataclasses.asdict(coding).items() if v is not None and v is not False}


def to_json(plan: dict[str, Any], probed: Sequence[PlannedImage | Failure]) -> dict[str, Any]:
    """``plan`` with each input's probed size (``inputs``: ``[path, width, height]``) or failure
    (``[path, reason]``), and, beside it, each input's SHA-256 (``inputs_sha256``: hex, or null for
    a failure; a list of its own, so that an oml that predates it still reads ``inputs``), and the
    input policy's notes of the inputs that have some (``notes``: path → lines; absent when none)."""
    notes = {p.path: list(p.notes) for p in probed if isinstance(p, PlannedImage) and p.notes}
    return {
        **plan,
        "inputs": [[p.path, p.width, p.height] if isinstance(p, PlannedImage) else [p.path, p.reason] for p in probed],
        "inputs_sha256": [p.sha256 if isinstance(p, PlannedImage) else None for p in probed],
        **({"notes": notes} if notes else {}),
    }


def from_json(plan: dict[str, Any], files: Sequence[storage.SourceFile] | None = None) -> list[PlannedImage | Failure]:
    """The probed inputs a plan records, with the URIs of this run's listing ``files`` (the same
    paths; without a listing, as when restoring, the URIs are left empty)."""
    entries = plan["inputs"]
    if files is not None and [f.relative_path for f in files] != [e[0] for e in entries]:
        raise ValueError("plan.json does not match the input listing; write to a new output")
    uris = [f.uri for f in files] if files is not None else [""] * len(entries)
    hashes = plan.get("inputs_sha256", [""] * len(entries))
    if len(hashes) != len(entries):
        raise ValueError(f"plan.json is damaged: {len(hashes)} SHA-256 values for {len(entries)} inputs")
    notes = plan.get("notes", {})
    return [
        PlannedImage(uri, e[0], int(e[1]), int(e[2]), h or "", tuple(notes.get(e[0], ()))) if len(e) == 3 else Failure(uri, e[0], str(e[1]))
        for uri, e, h in zip(uris, entries, hashes)
    ]


def check(old: dict[str, Any], new: dict[str, Any], root: str) -> None:
    """A re-run must describe the same archive; otherwise say what differs."""
    if old.get("format") != PLAN_FORMAT:
        raise ValueError(older_archive(root, old))
    old = {**old, "coding": {**_coding_defaults(), **old.get("coding", {})}}  # fields added since keep their default
    if "min_unit_tiles" not in old:  # planned before units had a floor: the re-run keeps the old plan's units
        new = {k: v for k, v in new.items() if k != "min_unit_tiles"}
    changed = [k for k in new if k != "input" and json.loads(json.dumps(old.get(k))) != json.loads(json.dumps(new[k]))]
    if not changed:
        return
    detail = ", ".join(changed)
    if "listing_sha256" in changed:
        detail += f" (the input listing now has {new['files']} files; {old.get('files')} when the archive was started)"
    raise ValueError(
        f"{storage.redact(root)} is an archive started with other settings: {detail} differ. "
        "Re-run with the original settings to resume it, or write to a new output."
    )


def _coding_defaults() -> dict[str, Any]:
    return _options(CodingConfig())


def older_archive(root: str, plan: dict[str, Any]) -> str:
    return (
        f"{storage.redact(root)} was written by an older oml (plan format {plan.get('format')!r}: one row per image "
        f"in shards/); restore it with that version (git tag or commit before tile units), or archive the images again"
    )


def planned_units(plan: dict[str, Any], probed: Sequence[PlannedImage | Failure]) -> list[Unit]:
    """The units ``plan`` cuts. Raises ValueError when its unit settings are not positive whole
    numbers (plan.json is not hashed: a damaged or edited one)."""
    coding = plan["coding"]
    counts = {"unit_tiles": plan.get("unit_tiles"), "min_units": plan.get("min_units"), "min_unit_tiles": plan.get("min_unit_tiles", 1)}
    for key, value in counts.items():  # min_unit_tiles is absent from plans written before units had a floor
        if type(value) is not int or value < 1:
            raise ValueError(f"plan.json is damaged: {key} is {value!r}, not a positive whole number")
    images = [p for p in probed if isinstance(p, PlannedImage)]
    return make_units(
        images,
        int(coding["tile"]),
        counts["unit_tiles"],
        counts["min_units"],
        whole_images=coding.get("target") is not None,
        min_unit_tiles=plan.get("min_unit_tiles"),
    )
