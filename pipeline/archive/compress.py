"""The compression driver: plan the units, run the uncommitted ones on Ray, write the manifest and the summary."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from oml import ratecontrol
from pipeline import storage
from pipeline.archive import layout, models as archive_models, plan as planning, webdataset
from pipeline.archive.config import CompressConfig
from pipeline.archive.encoder import UnitEncoder, get_model
from pipeline.archive.layout import UnitResult
from pipeline.archive.plan import Failure, PlannedImage, Unit
from pipeline.archive.progress import Progress
from pipeline.archive.runner import cluster_checked, ray_session, run_tasks
from pipeline.archive.schema import psnr_of
from pipeline.walk import Unlisted


@dataclass(frozen=True)
class CompressReport:
    """The outcome of :func:`run_compress`; ``exit_code`` is 0 only when nothing failed."""

    images: int
    archived: int
    failed: int
    units: int
    units_skipped: int
    units_written: int
    units_failed: tuple[tuple[int, str], ...]
    summary_uri: str
    manifest_uri: str
    summary: dict[str, Any] = field(repr=False)
    unlisted: tuple[Failure, ...] = ()  # what the listing could not read (also in failed and the manifest)
    notes: tuple[str, ...] = ()  # one line each, for the user

    @property
    def exit_code(self) -> int:
        return 0 if self.failed == 0 and not self.units_failed else 1


class ImageTotals:
    """Per archived image, from the committed markers: coded bytes and squared errors, summed over its pieces."""

    def __init__(self, image: PlannedImage) -> None:
        self.image, self.tiles, self.coded_bytes, self.sse_before, self.sse_after = image, 0, 4, 0.0, 0.0  # 4: the CRC-32
        self.metadata_cut: list[str] = []

    @property
    def pixels(self) -> int:
        return self.image.width * self.image.height


@dataclass
class _Run:
    """What one :func:`run_compress` call found committed and did."""

    probed: list[PlannedImage | Failure]
    units: list[Unit]
    done: dict[int, UnitResult]
    skipped: int
    unlisted: list[Failure] = field(default_factory=list)
    written: list[UnitResult] = field(default_factory=list)
    unfinished: list[tuple[int, str]] = field(default_factory=list)
    seconds: float = 0.0

    def outcomes(self, tile: int) -> tuple[list[ImageTotals], list[tuple[int | None, Failure]]]:
        """The images whose every piece is committed and coded, and every failure (with its unit,
        ``None`` when found while planning), one per input."""
        failures: dict[str, tuple[int | None, Failure]] = {p.path: (None, p) for p in [*self.unlisted, *self.probed] if isinstance(p, Failure)}
        for r in self.results:
            for f in r.failures:
                failures.setdefault(f.path, (r.index, f))
        totals = {p.path: ImageTotals(p) for p in self.probed if isinstance(p, PlannedImage) and p.path not in failures}
        for r in self.results:
            for piece in r.pieces:
                if piece.path in totals:
                    t = totals[piece.path]
                    t.tiles += piece.count
                    t.coded_bytes += piece.header_bytes + piece.record_bytes
                    t.sse_before += piece.sse_before
                    t.sse_after += piece.sse_after
                    t.metadata_cut += list(piece.metadata_cut)
        archived = [t for t in totals.values() if t.tiles == planning.num_tiles(t.image, tile)]
        return archived, sorted(failures.values(), key=lambda f: f[1].path)

    @property
    def results(self) -> list[UnitResult]:
        return [self.done[i] for i in sorted(self.done)]


def _fingerprint(cfg: CompressConfig) -> str:
    """The model's fingerprint; also checks, before any work, that it can code as asked."""
    model = get_model(cfg.model, cfg.coding.quality)
    if cfg.coding.target is not None:
        ratecontrol.check_model(model)
    if cfg.coding.lmbda is not None:
        model.resolve(lmbda=cfg.coding.lmbda)  # out of range: one error now, not one per image
    return model.fingerprint(cfg.coding.quality).hex()


def _plan(config: CompressConfig, root: str, files: Sequence[storage.SourceFile], fingerprint: str) -> tuple[list, list[Unit], list[str]]:
    """The probed inputs, the units and notes for the user: from the archive's plan when it exists
    (after checking that this run describes the same archive; a missing or damaged ``plan.json``
    or copy is written back), else by reading every input's header and hashing its bytes, recorded."""
    settings = planning.settings(config, files, fingerprint)
    read = layout.read_plan(root)
    if read.plan is not None:
        old = read.plan
        planning.check(old, settings, root)
        probed = planning.from_json(old, files)
        units = planning.planned_units(old, probed)  # the old plan's units (its unit floor, if older)
        if read.repair:
            layout.write_plan(root, old, read.repair)
        return probed, units, [f"{read.note}; rewrote {' and '.join(layout.PLAN_FILES[r] for r in read.repair)}"] if read.note else []
    probed = planning.probe_all(files, config.coding.max_pixels, config.coding.to_srgb)
    plan = planning.to_json(settings, probed)
    layout.write_plan(root, plan)
    return probed, planning.planned_units(settings, probed), []


def run_compress(config: CompressConfig, encoder: Callable[[Unit], UnitResult] | None = None) -> CompressReport:
    """Archive every image under ``config.input`` into ``config.output``, resuming a previous run.

    ``encoder`` replaces :class:`UnitEncoder` (tests inject faults this way).

    Raises:
        ValueError: no inputs, or the output is an archive made with other settings.
        ClusterError: a local path on a cluster of several nodes (without ``shared_path``).
    """
    with cluster_checked(config.ray, {"--input": config.input, "--output": config.output}):
        return _compress(config, encoder)


def _compress(config: CompressConfig, encoder: Callable[[Unit], UnitResult] | None) -> CompressReport:
    root = storage.normalize(config.output)
    unlisted: list[Unlisted] = []
    if webdataset.is_webdataset(config.input):  # tar shards: one source per sample, its sidecars kept in its row
        files = webdataset.list_samples(config.input, config.extensions, unlisted)
    else:
        files = storage.list_files(config.input, config.extensions, unlisted)
    if not files:
        detail = f"; {len(unlisted)} could not be listed, first {unlisted[0].path}: {unlisted[0].reason}" if unlisted else ""
        raise ValueError(f"no input images under {storage.redact(config.input)} (looked for {', '.join(config.extensions)}){detail}")
    fingerprint = _fingerprint(config)
    probed, units, notes = _plan(config, root, files, fingerprint)
    stored_models = archive_models.store(root, config.model.name, bytes.fromhex(fingerprint)) if config.model.pretrained and config.model.weights is None else {}
    for folder in (root, layout.units_uri(root)):
        storage.remove_stale_temporaries(folder)  # what a killed run left (plan, manifest, summary, units)
    done = layout.committed(root, units)
    input_root = storage.normalize(config.input)
    run = _Run(probed, units, done, skipped=len(done), unlisted=[Failure(storage.join(input_root, u.path.rstrip("/")), u.path, u.reason) for u in unlisted])
    pending = [u for u in units if u.index not in done]
    if pending and done and not all(p.sha256 for p in probed if isinstance(p, PlannedImage)):
        notes.append(
            "plan.json predates source hashes: this resumed run identifies a source by its path and size only, "
            "so a source edited in place since the archive was started would go unnoticed; archive into a new output to have it checked"
        )
    threads = max(1, int(config.ray.cpus_per_worker))
    encoder = encoder or UnitEncoder(root, config.model, config.coding, fingerprint, threads, config.ray.gpus_per_worker)
    progress = Progress("compress", sum(u.tiles for u in units), sum(r.tiles for r in done.values()), config.progress, unit="tile")

    def finished(result: UnitResult) -> None:
        run.done[result.index] = result
        run.written.append(result)
        unit = units[result.index]
        progress.update(result.tiles, unit.tiles - result.tiles)

    def crashed(unit: Unit, reason: str) -> None:
        run.unfinished.append((unit.index, reason))
        progress.update(0, unit.tiles)

    start = time.perf_counter()
    if pending:
        with ray_session(config.ray) as ray:
            run_tasks(ray, config.ray, encoder, pending, finished, crashed)
    run.seconds = time.perf_counter() - start
    run.unfinished.sort()
    progress.close()
    report = _finish(config, root, run, stored_models)
    return dataclasses.replace(report, notes=tuple(notes))


def _finish(config: CompressConfig, root: str, run: _Run, stored_models: dict[str, dict[str, str]] | None = None) -> CompressReport:
    """Write the manifest and the summary from every committed marker; build the report."""
    archived, failures = run.outcomes(config.coding.tile)
    manifest = {
        "format": "oml-archive-manifest/2",
        "images": len(run.probed),
        "archived": len(archived),
        "failed": [{"unit": unit, **f._asdict()} for unit, f in failures],
        "unfinished_units": [
            {"unit": i, "reason": reason, "sources": sorted({p.image.source for p in run.units[i].pieces})} for i, reason in run.unfinished
        ],
    }
    manifest_uri, summary_uri = storage.join(root, "manifest.json"), storage.join(root, "summary.json")
    storage.write_json(manifest_uri, manifest)
    summary = _summary(config, root, run, archived, len(failures))
    summary["models"] = stored_models or {}  # models/<sha256>.pt: the weights files the archive holds for its decoder
    storage.write_json(summary_uri, summary)
    return CompressReport(
        images=len(run.probed),
        archived=len(archived),
        failed=len(failures),
        units=len(run.units),
        units_skipped=run.skipped,
        units_written=len(run.written),
        units_failed=tuple(run.unfinished),
        summary_uri=summary_uri,
        manifest_uri=manifest_uri,
        summary=summary,
        unlisted=tuple(run.unlisted),
    )


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _rate(count: int, seconds: float) -> float | None:
    return count / seconds if count and seconds > 0 else None


def _summary(config: CompressConfig, root: str, run: _Run, archived: list[ImageTotals], failed: int) -> dict[str, Any]:
    run_tiles = sum(r.tiles for r in run.written)
    # what the archive occupies: the units' Parquet files (the markers and the run's JSON files are
    # a few hundred bytes each more); over coded_bytes, the container's overhead
    stored, pixels = sum(r.tiles_bytes + r.images_bytes for r in run.results), sum(t.pixels for t in archived)
    before = [psnr_of(t.sse_before, t.pixels) for t in archived]
    after = [psnr_of(t.sse_after, t.pixels) for t in archived]
    return {
        "format": "oml-archive-summary/2",
        "input": storage.redact(storage.normalize(config.input)),
        "output": storage.redact(root),
        "model": config.model.name,
        "quality": config.coding.quality,
        **({"lmbda": config.coding.lmbda} if config.coding.lmbda is not None else {}),
        **({"target": list(config.coding.target)} if config.coding.target is not None else {}),
        **({"to_srgb": True} if config.coding.to_srgb else {}),
        "steps": config.coding.steps,
        **({"quick": True} if config.coding.quick else {}),
        "refine": config.coding.refine,
        "metrics": list(config.coding.metrics),
        "images": len(run.probed),
        "archived": len(archived),
        "failed": failed,
        "tiles": sum(r.tiles for r in run.results),
        "coded_bytes": sum(t.coded_bytes for t in archived),
        "mean_bpp": _mean([8.0 * t.coded_bytes / t.pixels for t in archived]),
        "stored_bytes": stored,
        "stored_bpp": 8.0 * stored / pixels if pixels else None,
        "mean_psnr_before": _mean(before),
        "mean_psnr_after": _mean(after),
        "mean_delta_psnr": _mean([a - b for a, b in zip(after, before)]),
        # what the input policy changed on the way in, per archived image (oml.imageio)
        "input_notes": {t.image.path: list(t.image.notes) for t in archived if t.image.notes},
        # metadata blocks the size bound left out, per archived image (named, never silent)
        "metadata_cut": {t.image.path: t.metadata_cut for t in archived if t.metadata_cut},
        "units": {
            "total": len(run.units),
            "tiles_per_unit": max((u.tiles for u in run.units), default=0),
            "committed": len(run.done),
            "skipped": run.skipped,
            "written": len(run.written),
            "failed": len(run.unfinished),
        },
        "last_run": {
            "seconds": round(run.seconds, 3),
            "tiles": run_tiles,
            "tiles_per_second": _rate(run_tiles, run.seconds),
            "worker_seconds": {k: round(sum(r.seconds.get(k, 0.0) for r in run.written), 3) for k in ("read", "decode", "code", "write")},
            "num_workers": config.ray.num_workers,
        },
    }
