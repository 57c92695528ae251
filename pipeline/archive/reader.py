"""Read an archive from Python: list its images with their metadata, decode one image or a window of it.

    from pipeline.archive.reader import open_archive
    archive = open_archive("s3://bucket/archive")          # or a local folder
    for entry in archive:                                   # listing order (for WebDataset shards: shard, then member order)
        print(entry.key, entry.width, entry.height, entry.sidecars.get("json"))
    pixels = archive.read("shard-000/000001.jpg")           # uint8 (3, H, W), by key or path
    window = archive.read(entry.key, region=Region(0, 0, 64, 64))

Opening reads each unit's marker and images file (small); a decode reads the tiles its image needs,
with every check a restore makes (:func:`pipeline.archive.decoder.decode_pixels`): each tiles file,
or each row group of a window, against the SHA-256 its marker recorded; the header's and each
record's SHA-256; the tiles present; each tile's symbols. An image that a missing or damaged unit
leaves unreadable is not listed silently away: it is in :attr:`Archive.problems` with why, and
:meth:`Archive.check` raises naming the first.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from oml import tiling
from pipeline import storage
from pipeline.archive import layout, plan as planning, schema
from pipeline.archive.config import ModelConfig
from pipeline.archive.decoder import DecodeError, DecodeJob, decode_pixels
from pipeline.archive.decompress import catalogue


class ArchiveError(ValueError):
    """The archive, or an image in it, cannot be read; the message says which and why (one line)."""


@dataclass(frozen=True)
class Entry:
    """One archived image: its key (the WebDataset sample key, else its path), its path relative to
    the archive's input, its size, provenance, metadata blocks and sidecar files."""

    key: str
    path: str
    width: int
    height: int
    source: str
    source_bytes: int
    source_sha256: str
    source_format: str | None
    source_mtime: float | None
    metadata: tuple[tuple[str, bytes], ...]
    metadata_cut: tuple[str, ...]
    sidecars: dict[str, bytes] = field(default_factory=dict)
    num_tiles: int = 0

    def to_dict(self) -> dict[str, Any]:
        """The entry as plain values (bytes as they are)."""
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def entry_of(row: dict[str, Any]) -> Entry:
    """An images-table row → its :class:`Entry`."""
    return Entry(
        key=row.get("key") or row["path"],
        path=row["path"],
        width=int(row["width"]),
        height=int(row["height"]),
        source=storage.redact(row["source"]),
        source_bytes=int(row["source_bytes"]),
        source_sha256=schema.hex_of(row["source_sha256"]),
        source_format=row.get("source_format"),
        source_mtime=row.get("source_mtime"),
        metadata=tuple((b["kind"], b["data"]) for b in row.get("metadata") or ()),
        metadata_cut=tuple(row.get("metadata_cut") or ()),
        sidecars={s["name"]: s["data"] for s in row.get("sidecars") or ()},
        num_tiles=int(row["num_tiles"]),
    )


class Archive:
    """An archive opened for reading (:func:`open_archive`)."""

    def __init__(self, uri: str, weights: str | None = None, metric: str | None = None) -> None:
        self.root = storage.normalize(uri)
        read = layout.read_plan(self.root)
        if read.plan is None:
            raise ArchiveError(f"{storage.redact(self.root)} is not an oml archive (no plan.json)")
        if read.plan.get("format") != planning.PLAN_FORMAT:
            raise ArchiveError(planning.older_archive(self.root, read.plan))
        self.plan = read.plan
        self.notes = (read.note,) if read.note else ()
        self.model = ModelConfig(weights=weights) if weights else ModelConfig(**self.plan["model"])
        self.metric = metric
        found = catalogue(self.root, self.plan)
        # as a restore judges: an image a unit left incomplete, or one archived in part only
        self.problems: dict[str, str] = {path: f"{why}; re-run compress to repair it" for path, why in found.broken.items()}
        for path, why in found.failed.items():
            if path not in found.broken and (path in found.rows or path in found.tiles):
                self.problems[path] = f"it was archived in part only: {why}"
        self._rows = {p: r for p, r in found.rows.items() if p not in self.problems}
        self._tiles = {p: tuple(found.tiles.get(p, ())) for p in self._rows}
        self._entries = [entry_of(r) for r in self._rows.values()]
        self._keys: dict[str, str] = {}
        for e in self._entries:
            self._keys.setdefault(e.key, e.path)
        self.failed = dict(found.failed)  # inputs not archived (the manifest's, planning's included), with why
        try:
            self.failed |= {f["path"]: f["reason"] for f in storage.read_json(storage.join(self.root, "manifest.json"))["failed"]}
        except (OSError, ValueError, KeyError, TypeError):
            pass  # no manifest yet (a run in progress): the units' own failures

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[Entry]:
        return iter(self._entries)

    @property
    def entries(self) -> list[Entry]:
        return list(self._entries)

    def check(self) -> None:
        """ArchiveError naming the first image a missing or damaged unit leaves unreadable, if any."""
        if self.problems:
            path, why = next(iter(self.problems.items()))
            more = f" (and {len(self.problems) - 1} more images)" if len(self.problems) > 1 else ""
            raise ArchiveError(f"{storage.redact(self.root)}: {path} cannot be read: {why}{more}")

    def path_of(self, key: str) -> str:
        if key in self._rows:
            return key
        if key in self._keys:
            return self._keys[key]
        if key in self.problems:
            raise ArchiveError(f"{key} cannot be read: {self.problems[key]}")
        raise KeyError(key)

    def row(self, key: str) -> dict[str, Any]:
        """The images-table row of the image with this key or path."""
        return self._rows[self.path_of(key)]

    def entry(self, key: str) -> Entry:
        return entry_of(self.row(key))

    def read(self, key: str, region: tiling.Region | None = None) -> torch.Tensor:
        """The uint8 ``(3, H, W)`` pixels of the image with this key or path, or of ``region`` of it
        (only the row groups holding the tiles it overlaps are read, and those tiles decoded).

        Raises:
            KeyError: no such image. ArchiveError: the region is not inside the image, or the image's
                bytes fail a check (the message names the unit or the tile).
        """
        path = self.path_of(key)
        row = self._rows[path]
        if region is not None:
            region = tiling.Region(*region)
            try:
                tiling.check_region(region, row["height"], row["width"])
            except ValueError as exc:
                raise ArchiveError(f"{path}: {exc}") from None
        try:
            return decode_pixels(self.model, DecodeJob(row, self._tiles[path], "", region), self.metric, self.root)
        except DecodeError as exc:
            raise ArchiveError(str(exc)) from None

    def unit_of(self, key: str) -> int:
        """The unit holding the image's first tile (for reading images unit by unit)."""
        sources = self._tiles[self.path_of(key)]
        return min((s.unit for s in sources), default=-1)


def open_archive(uri: str, weights: str | None = None, metric: str | None = None) -> Archive:
    """Open the archive at ``uri`` (a local folder or ``s3://bucket/prefix``) for reading."""
    return Archive(uri, weights, metric)
