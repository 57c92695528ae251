"""The decompression driver: find each selected image's rows across the committed units, restore them on Ray."""

from __future__ import annotations

import dataclasses
import fnmatch
import os
import posixpath
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from oml import metadata, tiling
from pipeline import files, storage
from pipeline.archive import pngstream, schema
from pipeline.archive import layout, plan as planning
from pipeline.archive.config import DecompressConfig, ModelConfig, RayConfig
from pipeline.archive.decoder import DecodedImage, DecodeJob, ImageDecoder, TileSource, check_source
from pipeline.archive.progress import Progress
from pipeline.archive.runner import cluster_checked, ray_session, run_tasks
from pipeline.walk import output_names


@dataclass(frozen=True)
class DecompressReport:
    selected: int
    restored: int
    failed: int
    mismatched: int
    summary_uri: str
    results: tuple[DecodedImage, ...] = field(repr=False)
    notes: tuple[str, ...] = ()  # one line each, for the user (the plan was read from its copy …)

    @property
    def exit_code(self) -> int:
        return 0 if self.failed == 0 and self.mismatched == 0 else 1


def _matches(row_source: str, row_path: str, patterns: Sequence[str]) -> bool:
    return any(
        fnmatch.fnmatchcase(row_path, p) or fnmatch.fnmatchcase(row_source, p) or row_source == p or row_path == p
        for p in patterns
    )


def png_names(paths: Sequence[str]) -> dict[str, str]:
    """Relative output name per relative source path, all distinct (:func:`pipeline.walk.output_names`)."""
    return output_names(paths, ".png")


@dataclass
class Catalogue:
    """What the committed units hold: image rows by path, where each image's tiles are, and the
    images that a uncommitted or damaged unit leaves incomplete (with why)."""

    rows: dict[str, dict[str, Any]] = field(default_factory=dict)
    tiles: dict[str, list[TileSource]] = field(default_factory=dict)
    broken: dict[str, str] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)  # images a unit could not code, with why


def catalogue(root: str, plan: dict[str, Any]) -> Catalogue:
    """Read every unit's marker and images file (small; the tiles files are read by the decoders,
    which check their hashes), against the units the plan expects."""
    found = Catalogue()
    for unit in planning.planned_units(plan, planning.from_json(plan)):
        check = layout.read_marker(root, unit.index, tiles=False)
        try:
            table = schema.read_parquet(check.images).to_pylist() if check.result else []
        except (OSError, ValueError) as exc:  # pyarrow's errors derive from these
            check = check._replace(result=None, why=f"unit {unit.index}: its images Parquet file cannot be read ({type(exc).__name__}: {exc})")
        if check.result is not None and not check.result.covers(unit):  # as compress judges a unit committed
            check = check._replace(result=None, why=f"unit {unit.index}: its marker does not account for the tiles plan.json gives it (plan or marker damaged)")
        if check.result is None:
            for piece in unit.pieces:
                found.broken.setdefault(piece.image.path, check.why)
            continue
        for row in table:
            found.rows.setdefault(row["path"], row)
        for f in check.result.failures:
            found.failed.setdefault(f.path, f.reason)
        uri = layout.unit_uri(root, unit.index, "tiles")
        r = check.result
        position = 0  # the unit's tiles file holds its pieces' tiles in the marker's order
        for p in r.pieces:
            found.tiles.setdefault(p.path, []).append(
                TileSource(r.index, uri, r.tiles_bytes, r.tiles_sha256, p.first, p.count, position, r.tiles_groups, r.tiles_footer)
            )
            position += p.count
    return found


def _check_output(root: str, output: str, sources: str | None) -> None:
    """ValueError when the output folder is the archive itself or the folder its images were read
    from (``sources``, as ``plan.json`` records it), however either is spelled (a link, a bind mount)."""
    if storage.same_place(output, root):
        raise ValueError(f"{storage.redact(output)} is the archive itself: restore into another folder")
    if sources and storage.same_place(output, sources):
        raise ValueError(f"{storage.redact(output)} is the archive's input folder: restored images would replace the originals; choose another output")


def _is_source(target: str, source: str) -> bool:
    """Whether writing ``target`` would replace the row's ``source``: the same local file however
    spelled (a source that is not a local path is only compared as spelled, never opened)."""
    return target == source or (os.path.isabs(source) and files.same(target, source))


def _decode_jobs(found: Catalogue, config: DecompressConfig, output: str, sources: str | None = None) -> tuple[list[DecodeJob], list[DecodedImage]]:
    """One job per selected image, with its output URI; and what is refused before decoding: an
    image a unit left incomplete (named, so nothing goes unreported), a path that would leave the
    output folder, an output that is the row's source.

    Raises:
        ValueError: some outputs would lie inside the archive's input folder ``sources`` (an
            output folder above it), where they could replace originals.
    """
    select = config.select
    refused = [
        DecodedImage("", path, "", "failed", f"not restored: {why}; re-run compress to repair it", {})
        for path, why in found.broken.items()
        if not select or _matches("", path, select)
    ]
    # an image some units coded and another could not (its source changed, or is truncated there): in part only
    partial = {path: why for path, why in found.failed.items() if path not in found.broken and (path in found.rows or path in found.tiles)}
    refused += [
        DecodedImage(found.rows.get(path, {}).get("source", ""), path, "", "failed", f"not restored: it was archived in part only: {why}", {})
        for path, why in partial.items()
        if not select or _matches(found.rows.get(path, {}).get("source", ""), path, select)
    ]
    chosen = []
    for path, row in found.rows.items():
        if path in found.broken or path in partial or (select and not _matches(row["source"], path, select)):
            continue
        try:
            storage.safe_relative(path)
        except ValueError as exc:
            refused.append(DecodedImage(row["source"], path, "", "failed", f"not restored: {exc} (damaged or forged archive row)", {}))
            continue
        chosen.append(row)
    names = png_names([r["path"] for r in chosen])
    among_sources = storage.place(sources) if sources else lambda uri: False
    inside = [names[r["path"]] for r in chosen if among_sources(storage.join(output, names[r["path"]]))]
    if inside:
        raise ValueError(
            f"restored images would be written inside the archive's input folder {storage.redact(sources)} "
            f"({len(inside)}, first {storage.redact(storage.join(output, inside[0]))}), where they could replace originals; choose an output outside it"
        )
    jobs = []
    for row in chosen:
        target = storage.join(output, names[row["path"]])
        if _is_source(target, row["source"]):
            refused.append(DecodedImage(row["source"], row["path"], target, "failed", "not restored: the output would overwrite its source", {}))
            continue
        job = DecodeJob(row, tuple(found.tiles.get(row["path"], ())), target, config.region)
        jobs += _bands(job, config.band_tiles) if config.region is None else [job]
    return jobs, refused


def _bands(job: DecodeJob, band_tiles: int) -> list[DecodeJob]:
    """``job`` itself, or, for an image of more than ``band_tiles`` tiles, one job per band of whole
    tile rows (about ``band_tiles`` tiles each), top to bottom."""
    row = job.image
    size, height, width = row["tile_size"], row["height"], row["width"]
    rows, cols = -(-height // size), -(-width // size)
    if rows * cols <= band_tiles or rows < 2:
        return [job]
    step = max(1, band_tiles // cols) * size
    tops = range(0, height, step)
    return [job._replace(region=tiling.Region(0, top, width, min(step, height - top)), band=k) for k, top in enumerate(tops)]


@dataclass
class _Partial:
    """A banded image being written: the next band the file needs, bands that came early, results so far."""

    next: int = 0
    early: dict[int, pngstream.Band] = field(default_factory=dict)
    results: list[DecodedImage] = field(default_factory=list)
    file: storage.Writer | None = None
    png: pngstream.PngWriter | None = None


class _BandedWriter:
    """Writes each banded image's PNG as its bands come back, in order (a band that arrives early
    waits for those above it), and reports the image once: when its last band is written and the
    file committed, or at its first failed band, when the partial file is discarded."""

    def __init__(self, jobs: Sequence[DecodeJob], report: Callable[[DecodedImage], None], replace: bool = False) -> None:
        self.report = report
        self.replace = replace
        self.jobs = {(j.image["path"], j.band): j for j in jobs if j.band is not None}
        self.bands = Counter(path for path, _ in self.jobs)
        self.open: dict[str, _Partial] = {}
        self.done: set[str] = set()

    def add(self, r: DecodedImage, band: int) -> None:
        """The result of band number ``band`` of image ``r.path`` (failed when it carries no rows)."""
        job = self.jobs[r.path, band]
        path = r.path
        if path in self.done:
            return
        if r.band is None or r.band[1] is None:
            self._finish(path, r._replace(reason=f"band {band}: {r.reason}"), commit=False)
            return
        state = self.open.setdefault(path, _Partial())
        state.results.append(r)
        state.early[band] = r.band[1]
        try:
            while state.next in state.early:
                if state.png is None:
                    state.file = storage.Writer(job.output, replace=self.replace)
                    source = schema.source_of(job.image)
                    chunks = metadata.png_chunks(source.blocks) if source is not None else b""
                    state.png = pngstream.PngWriter(state.file, job.image["width"], job.image["height"], chunks)
                state.png.write(state.early.pop(state.next))
                state.next += 1
            if state.next < self.bands[path]:
                return
            state.png.close()
        except (OSError, ValueError) as exc:
            if files.out_of_room(exc):
                raise  # the run stops; its partial files are discarded (abort_all)
            why = f"not restored: {storage.explain(exc)}" if isinstance(exc, OSError) else f"cannot write {storage.redact(job.output)}: {exc}"
            self._finish(path, r._replace(status="failed", reason=why, band=None), commit=False)
            return
        self._finish(path, _merged(state.results), commit=True)

    def _finish(self, path: str, result: DecodedImage, commit: bool) -> None:
        state = self.open.pop(path, None)
        self.done.add(path)
        if state is not None and state.file is not None:
            if commit:
                try:
                    state.file.commit()
                except OSError as exc:
                    state.file.abort()
                    if files.out_of_room(exc):
                        raise
                    result = result._replace(status="failed", reason=f"not restored: {storage.explain(exc)}")
            else:
                state.file.abort()
        self.report(result._replace(band=None))

    def abort_all(self) -> None:
        """Discard every partial file (the run stopped before their last band)."""
        for state in self.open.values():
            if state.file is not None:
                state.file.abort()
        self.open.clear()


def _merged(results: list[DecodedImage]) -> DecodedImage:
    """One image's result from its bands' (all written): a mismatch in any band is the image's."""
    first = results[0]
    bad = next((r for r in results if r.status != "ok"), None)
    checks: dict[str, Any] = {"bands": len(results)}
    if all("bit_exact" in r.checks for r in results):
        checks["bit_exact"] = all(r.checks["bit_exact"] for r in results)
    sources = sorted({r.checks["checks_source"] for r in results if "checks_source" in r.checks})
    if sources:
        checks["checks_source"] = "; ".join(sources)
    if all("max_psnr_error" in r.checks for r in results):
        checks["max_psnr_error"] = max(r.checks["max_psnr_error"] for r in results)
    first = first._replace(bytes_read=sum(r.bytes_read for r in results))
    if bad is not None:
        return first._replace(status=bad.status, reason=bad.reason, checks=checks | bad.checks)
    return first._replace(checks=checks)


def _check_sources(jobs: list[DecodeJob], sources: str) -> list[DecodeJob]:
    """Bands of a banded image compare with their rows of the source only if the source is the file
    that was compressed: its hash, taken here once per image, not once per band."""
    checked: dict[str, str] = {}
    for job in jobs:
        if job.band is not None and job.image["path"] not in checked:
            checked[job.image["path"]] = check_source(sources, job.image)
    return [job._replace(source_check=checked[job.image["path"]]) if job.band is not None else job for job in jobs]


def _check_region(config: DecompressConfig, jobs: list[DecodeJob], refused: list[DecodedImage]) -> None:
    if config.region is None:
        return
    if len(jobs) + len(refused) != 1:
        raise ValueError(f"--region restores a window of one image; the selection matches {len(jobs) + len(refused)}: name one with --select")
    for job in jobs:
        tiling.check_region(config.region, job.image["height"], job.image["width"])


def _bounded(ray: Any, cfg: RayConfig, banded: _BandedWriter) -> RayConfig:
    """With banded images and no ``--workers``: twice as many tasks in flight as the cluster runs at
    once, so bands that finish before those above them cannot pile up in the driver."""
    if cfg.num_workers is not None or not banded.bands:
        return cfg
    slots = int(ray.cluster_resources().get("CPU", 1) // cfg.cpus_per_worker)
    return dataclasses.replace(cfg, num_workers=max(2, 2 * slots))


def run_decompress(config: DecompressConfig, decoder: Callable[[DecodeJob], DecodedImage] | None = None) -> DecompressReport:
    """Restore the archive's images (all, or those ``config.select`` names) as PNG files.

    Raises:
        ValueError: ``config.input`` is not an archive (or one of an older format), the selection
            matches nothing, or ``config.region`` is not one window inside one image.
        ClusterError: a local path on a cluster of several nodes (without ``shared_path``).
    """
    with cluster_checked(config.ray, {"--input": config.input, "--output": config.output, "--sources": config.sources}):
        return _decompress(config, decoder)


def _decompress(config: DecompressConfig, decoder: Callable[[DecodeJob], DecodedImage] | None) -> DecompressReport:
    root = storage.normalize(config.input)
    read = layout.read_plan(root)
    if read.plan is None:
        raise ValueError(f"{storage.redact(root)} is not an oml archive (no plan.json)")
    plan = read.plan
    if plan.get("format") != planning.PLAN_FORMAT:
        raise ValueError(planning.older_archive(root, plan))
    model = config.model or ModelConfig(**plan["model"])
    output = storage.normalize(config.output)
    _check_output(root, output, plan.get("input"))
    jobs, refused = _decode_jobs(catalogue(root, plan), config, output, plan.get("input"))
    if not jobs and not refused:
        raise ValueError("no archived image matches the selection" if config.select else "the archive has no images yet")
    _check_region(config, jobs, refused)
    sources = storage.normalize(config.sources) if config.sources else None
    if config.verify and sources:
        storage.exists(sources)  # a store that refuses or cannot be reached: one error now, not "source unavailable" per image
        jobs = _check_sources(jobs, sources)
    if storage.is_local(output):
        for folder in sorted({os.path.dirname(j.output) for j in jobs}):
            storage.remove_stale_temporaries(folder)  # what a killed restore left
    decoder = decoder or ImageDecoder(
        model, config.verify, config.metric, config.psnr_tolerance, max(1, int(config.ray.cpus_per_worker)), sources, overwrite=config.overwrite,
        to_srgb=bool(plan["coding"].get("to_srgb", False)), archive=root,
    )
    total = len({j.image["path"] for j in jobs}) + len(refused)  # images, not bands
    progress = Progress("decompress", total, 0, config.progress)
    results: list[DecodedImage] = list(refused)
    progress.update(0, len(refused))

    def report(r: DecodedImage) -> None:
        results.append(r)
        progress.update(r.status == "ok", r.status != "ok")

    banded = _BandedWriter(jobs, report, replace=config.overwrite)

    def finished(r: DecodedImage) -> None:
        (banded.add(r, r.band[0]) if r.band is not None else report(r))

    def crashed(job: DecodeJob, reason: str) -> None:
        failed = DecodedImage(job.image["source"], job.image["path"], job.output, "failed", reason, {})
        (banded.add(failed, job.band) if job.band is not None else report(failed))

    start = time.perf_counter()
    try:
        if jobs:
            with ray_session(config.ray) as ray:
                run_tasks(ray, _bounded(ray, config.ray, banded), decoder, jobs, finished, crashed)
    finally:
        banded.abort_all()
    elapsed = time.perf_counter() - start
    progress.close()
    results.sort(key=lambda r: r.path)
    counts = {s: sum(r.status == s for r in results) for s in ("ok", "failed", "mismatch")}
    summary_uri = storage.join(output, "decompress-summary.json")
    storage.write_json(
        summary_uri,
        {
            "format": "oml-decompress-summary/1",
            "archive": storage.redact(root),
            "selected": total,
            "restored": counts["ok"],
            "failed": counts["failed"],
            "mismatched": counts["mismatch"],
            "verify": config.verify,
            **({"region": list(config.region)} if config.region else {}),
            "seconds": round(elapsed, 3),
            "tiles_bytes_read": sum(r.bytes_read for r in results),
            "problems": [{k: v for k, v in r._asdict().items() if k not in ("band", "bytes_read")} for r in results if r.status != "ok"],
        },
    )
    write_manifest(output, results, {j.image["path"]: j.image for j in jobs}, root)
    return DecompressReport(total, counts["ok"], counts["failed"], counts["mismatch"], summary_uri, tuple(results), (read.note,) if read.note else ())


MANIFEST_NAME = "manifest-sha256.txt"
SOURCES_NAME = "restored-sources.json"


def write_manifest(output: str, results: Sequence[DecodedImage], rows: dict[str, dict[str, Any]], root: str) -> None:
    """Beside the restored files: ``manifest-sha256.txt`` (BagIt's form: one ``SHA-256  relative
    path`` line per restored file, sorted by path) and ``restored-sources.json``, which maps each
    restored file to the archived source it came from (relative path, URI, size, SHA-256,
    modification time, format, declared depth, metadata left out)."""
    lines, files = [], {}
    for r in sorted((r for r in results if r.status == "ok" and r.output), key=lambda r: r.output):
        name = posixpath.relpath(r.output, output) if not storage.is_local(output) else os.path.relpath(r.output, output).replace(os.sep, "/")
        digest = r.sha256 or storage.file_sha256(r.output)  # a banded image: written by the driver, hashed here
        lines.append(f"{digest}  {name}\n")
        row = rows.get(r.path, {})
        files[name] = {
            "path": r.path,
            "source": storage.redact(row.get("source", "")),
            "source_bytes": row.get("source_bytes"),
            "source_sha256": schema.hex_of(row.get("source_sha256")),
            "source_mtime": row.get("source_mtime"),
            "source_format": row.get("source_format"),
            "source_bits": row.get("source_bits"),
            "source_sample_format": row.get("source_sample_format"),
            "metadata": [b["kind"] for b in row.get("metadata") or ()],
            "metadata_cut": list(row.get("metadata_cut") or ()),
            "restored_sha256": digest,
        }
    storage.write_bytes(storage.join(output, MANIFEST_NAME), "".join(lines).encode())
    storage.write_json(storage.join(output, SOURCES_NAME), {"format": "oml-restore-sources/1", "archive": storage.redact(root), "files": files})
