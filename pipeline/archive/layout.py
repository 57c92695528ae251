"""Where things live under an archive's root, what makes a unit committed, and how the plan is kept.

Unit ``i`` writes ``units/unit-{i:06d}.tiles.parquet`` and ``units/unit-{i:06d}.images.parquet``
(each atomically), then its done marker ``units/unit-{i:06d}.done.json``, which names both
files' sizes and SHA-256: a unit is committed when its marker parses and both files are the
ones it names. Anything else (no marker, a damaged one, a truncated, replaced or missing file) is
an uncommitted unit, which the next run redoes whole.

``plan.json`` is written once, when the archive is started, after ``plan.copy.json``: the same
plan with the SHA-256 of ``plan.json``'s bytes. Either one restores the archive; a missing or
damaged ``plan.json`` is read from the copy (:func:`read_plan`), and compress writes back
whichever of the two is missing or damaged.
"""

from __future__ import annotations

import dataclasses
import json
import posixpath
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from pipeline.archive import schema
from pipeline import storage
from pipeline.archive.plan import Failure, Unit

MARKER_FORMAT = "oml-archive-unit/1"
PLAN_COPY_FORMAT = "oml-archive-plan-copy/1"
PLAN_FILES = {"plan": "plan.json", "copy": "plan.copy.json"}


def plan_uri(root: str) -> str:
    return storage.join(root, "plan.json")


def plan_copy_uri(root: str) -> str:
    return storage.join(root, "plan.copy.json")


def plan_bytes(plan: dict[str, Any]) -> bytes:
    """``plan.json``'s bytes for ``plan`` (as :func:`pipeline.storage.write_json` writes JSON)."""
    return (json.dumps(plan, indent=1, sort_keys=True) + "\n").encode()


def write_plan(root: str, plan: dict[str, Any], which: tuple[str, ...] = ("copy", "plan")) -> None:
    """Write ``plan.copy.json`` (the plan and the SHA-256 of ``plan.json``'s bytes), then ``plan.json``;
    ``which`` names only those to (re)write."""
    data = plan_bytes(plan)
    if "copy" in which:
        storage.write_json(plan_copy_uri(root), {"format": PLAN_COPY_FORMAT, "plan_sha256": schema.sha256(data), "plan": plan})
    if "plan" in which:
        storage.write_bytes(plan_uri(root), data)


class PlanRead(NamedTuple):
    """The archive's plan (``None``: neither file exists), ``note``: one line when it was not read
    from an intact ``plan.json`` (else empty), and ``repair``: which files to write back
    (``"plan"``, ``"copy"``) to have both intact again."""

    plan: dict[str, Any] | None
    note: str = ""
    repair: tuple[str, ...] = ()


def _read_plan_file(root: str) -> tuple[bytes | None, dict[str, Any] | None, str]:
    """``plan.json``'s bytes and parsed plan, or why there is none."""
    try:
        data = storage.read_bytes(plan_uri(root))
    except FileNotFoundError:
        return None, None, "plan.json is missing"
    except OSError as exc:
        return None, None, f"plan.json cannot be read ({type(exc).__name__}: {exc})"
    try:
        plan = json.loads(data)
        if not isinstance(plan, dict):
            raise ValueError("not a JSON object")
    except ValueError as exc:
        return data, None, f"plan.json is damaged (not a plan: {exc})"
    return data, plan, ""


def _read_copy(root: str) -> tuple[dict[str, Any] | None, str, str]:
    """The plan ``plan.copy.json`` holds, checked against its own SHA-256, and that SHA-256; or why not."""
    try:
        copy = storage.read_json(plan_copy_uri(root))
    except FileNotFoundError:
        return None, "", "there is no plan.copy.json"
    except (OSError, ValueError) as exc:
        return None, "", f"plan.copy.json is damaged ({type(exc).__name__}: {exc})"
    if not isinstance(copy, dict) or copy.get("format") != PLAN_COPY_FORMAT or not isinstance(copy.get("plan"), dict):
        return None, "", "plan.copy.json is damaged (not a plan copy)"
    if schema.sha256(plan_bytes(copy["plan"])) != copy.get("plan_sha256"):
        return None, "", "plan.copy.json is damaged (its plan does not match its SHA-256)"
    return copy["plan"], copy["plan_sha256"], ""


def read_plan(root: str) -> PlanRead:
    """The archive's plan from ``plan.json``, checked against ``plan.copy.json`` when there is one
    (archives started before the copy have none), else from the copy.

    Raises:
        ValueError: neither file holds an intact plan (one line naming both).
    """
    data, plan, why = _read_plan_file(root)
    copy, digest, copy_why = _read_copy(root)
    if plan is not None and copy is not None:
        if schema.sha256(data) == digest:
            return PlanRead(plan)
        return PlanRead(copy, "plan.json differs from the plan its copy recorded (damaged or edited): read the plan from plan.copy.json", ("plan",))
    if plan is not None:  # no intact copy: plan.json as it is (its unit settings are still checked)
        missing = copy_why == "there is no plan.copy.json"
        return PlanRead(plan, "" if missing else f"{copy_why}: read the plan from plan.json", ("copy",))
    if copy is not None:
        return PlanRead(copy, f"{why}: read the plan from plan.copy.json (its SHA-256 checks)", ("plan",))
    if data is None and copy_why == "there is no plan.copy.json" and why == "plan.json is missing":
        return PlanRead(None)
    raise ValueError(f"{storage.redact(root)}: the archive's plan cannot be read: {why}, and {copy_why}")


def units_uri(root: str) -> str:
    return storage.join(root, "units")


def unit_uri(root: str, index: int, kind: str) -> str:
    """``kind``: ``tiles``, ``images`` (Parquet files) or ``done`` (the marker)."""
    suffix = "done.json" if kind == "done" else f"{kind}.parquet"
    return storage.join(root, "units", f"unit-{index:06d}.{suffix}")


class PieceResult(NamedTuple):
    """What a unit coded of one image: tiles ``first … first+count-1``, their records' bytes and
    squared errors (8-bit scale) at λ* = λ_t and with the first λ* set; ``header_bytes`` is the
    codec header's size when this piece holds tile 0 (the unit wrote the image row), else 0."""

    path: str
    first: int
    count: int
    header_bytes: int
    record_bytes: int
    sse_before: float
    sse_after: float
    metadata_cut: tuple[str, ...] | list[str] = ()  # metadata kinds the size bound left out (piece with tile 0)


@dataclass(frozen=True)
class UnitResult:
    """What one unit task did (its done marker): pieces coded, failures, seconds per stage, and
    the size and SHA-256 of the two Parquet files it committed; and where the tiles file's row
    groups and footer lie, with their hashes, so that a window can read and check only those it
    needs (absent in markers of archives written before 2026-11-25: their windows read the whole file). The
    tiles file holds the pieces' tiles in the order of ``pieces``."""

    index: int
    pieces: tuple[PieceResult, ...]
    failures: tuple[Failure, ...]
    seconds: dict[str, float]
    tiles_bytes: int = 0
    tiles_sha256: str = ""
    images_bytes: int = 0
    images_sha256: str = ""
    tiles_groups: tuple[schema.Span, ...] = ()
    tiles_footer: schema.Span | None = None

    @property
    def tiles(self) -> int:
        return sum(p.count for p in self.pieces)

    def to_json(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["pieces"] = [list(p) for p in self.pieces]
        d["failures"] = [f._asdict() for f in self.failures]
        return {"format": MARKER_FORMAT, **d}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> UnitResult:
        """Raises ValueError for anything but a marker of this format (damaged, forged, older)."""
        try:
            if d.get("format") != MARKER_FORMAT:
                raise ValueError(f"marker format {d.get('format')!r}, expected {MARKER_FORMAT}")
            fields = dataclasses.fields(cls)
            kwargs = {f.name: d[f.name] for f in fields if f.name in d or f.default is dataclasses.MISSING}
            kwargs["pieces"] = tuple(PieceResult(*p[:7], tuple(p[7]) if len(p) > 7 else ()) for p in kwargs["pieces"])
            kwargs["failures"] = tuple(Failure(**f) for f in kwargs["failures"])
            if "tiles_groups" in kwargs:
                kwargs["tiles_groups"] = tuple(schema.Span(*g) for g in kwargs["tiles_groups"])
            if kwargs.get("tiles_footer") is not None:
                kwargs["tiles_footer"] = schema.Span(*kwargs["tiles_footer"])
            result = cls(**kwargs)
            if sum(g.rows for g in result.tiles_groups) not in (0, result.tiles):
                raise ValueError(f"its row groups hold {sum(g.rows for g in result.tiles_groups)} tiles, its pieces {result.tiles}")
            # a unit that coded no tile (every piece failed) writes one row group of 0 rows and 0 bytes
            spans = [(g, g.rows == 0) for g in result.tiles_groups] + ([(result.tiles_footer, False)] if result.tiles_footer else [])
            if not all(_inside(span, result.tiles_bytes, empty) for span, empty in spans):
                raise ValueError("a row-group span lies outside its tiles file")
            return result
        except (AttributeError, KeyError, TypeError) as exc:
            raise ValueError(f"not a unit marker ({type(exc).__name__}: {exc})") from None

    def names(self, kind: str, data: bytes | None) -> bool:
        """Whether ``data`` is the ``kind`` file (``tiles``, ``images``) this marker committed."""
        size, digest = (self.tiles_bytes, self.tiles_sha256) if kind == "tiles" else (self.images_bytes, self.images_sha256)
        return data is not None and len(data) == size and schema.sha256(data) == digest

    def covers(self, unit: Unit) -> bool:
        """Whether the marker accounts for every piece of ``unit`` (coded or failed)."""
        done = {(p.path, p.first, p.count) for p in self.pieces} | {f.path for f in self.failures}
        return all((p.image.path, p.first, p.count) in done or p.image.path in done for p in unit.pieces)


def _inside(span: schema.Span, size: int, may_be_empty: bool) -> bool:
    """Whether ``span`` lies in a file of ``size`` bytes (and holds some, unless ``may_be_empty``)."""
    return 0 <= span.offset and (0 < span.length or may_be_empty) and span.offset + span.length <= size


class MarkerCheck(NamedTuple):
    """A done marker read with its images file: both when the unit is committed, else ``None`` and why not."""

    result: UnitResult | None
    images: bytes | None
    why: str


def _read(uri: str) -> bytes | None:
    try:
        return storage.read_bytes(uri)
    except OSError:
        return None


def read_marker(root: str, index: int, tiles: bool = True) -> MarkerCheck:
    """Unit ``index``'s marker, checked against its images file and its tiles file (the whole file
    with ``tiles``, else only its size: the decoders check the hash when they read it)."""
    uri = unit_uri(root, index, "done")
    try:
        result = UnitResult.from_json(storage.read_json(uri))
        if result.index != index:
            raise ValueError(f"it is unit {result.index}'s")
    except FileNotFoundError:
        return MarkerCheck(None, None, f"unit {index} not committed (compression unfinished or its marker lost)")
    except (OSError, ValueError) as exc:
        return MarkerCheck(None, None, f"damaged marker {posixpath.basename(uri)}: {exc}")
    images = _read(unit_uri(root, index, "images"))
    if not result.names("images", images):
        return MarkerCheck(None, None, f"unit {index}: its images Parquet file is {_what(images, result.images_bytes)}")
    if tiles:
        data = _read(unit_uri(root, index, "tiles"))
        ok = result.names("tiles", data)
    else:
        try:
            data, ok = None, storage.size(unit_uri(root, index, "tiles")) == result.tiles_bytes
        except OSError:
            data, ok = None, False
    if not ok:
        what = _what(data, result.tiles_bytes) if tiles else "missing or not the size committed"
        return MarkerCheck(None, None, f"unit {index}: its tiles Parquet file is {what}")
    return MarkerCheck(result, images, "")


def _what(data: bytes | None, committed: int) -> str:
    return "missing" if data is None else f"{len(data)} bytes, not the {committed} committed, or another hash"


def committed(root: str, units: Sequence[Unit]) -> dict[int, UnitResult]:
    """Units whose marker is intact, accounts for the unit's pieces, and names the very files
    beside it; any other unit is redone, which repairs it."""
    present = {posixpath.basename(u) for u in storage.glob(storage.join(units_uri(root), "unit-*.done.json"))}
    found = {}
    for unit in units:
        if posixpath.basename(unit_uri(root, unit.index, "done")) not in present:
            continue
        result = read_marker(root, unit.index).result
        if result is not None and result.covers(unit):
            found[unit.index] = result
    return found
