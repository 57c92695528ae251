"""``oml archive`` / ``oml restore``: the Ray jobs' one front end.

``jobs/compress.py`` and ``jobs/decompress.py`` (what ``ray job submit`` runs) are
``oml archive`` and ``oml restore`` under another name: both build their parser here, and the
coding flags come from :func:`pipeline.cli.add_coding_arguments`, the same function that builds
``oml compress``'s, so the single-file command and the archive cannot drift apart.

Importing this module loads no torch, CompressAI or Ray: ``--help`` and argument errors answer at once.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import Any

from pipeline.cli import UserError, add_coding_arguments, check_counts, region_arg

ARCHIVE_DOC = """Archive an image collection on Ray: every image under --input is cut into tiles, coded in units of tiles under --output.

    oml archive --input photos/ --output archive/ --quality 3 --steps 20
    ray job submit --working-dir . -- python jobs/compress.py --input s3://bucket/photos --output s3://bucket/archive

Run again with the same arguments to resume: committed units are skipped.
Exit status: 0 all archived, 1 some inputs or units failed (see the manifest), 2 bad arguments.
"""

RESTORE_DOC = """Restore images from an archive made by `oml archive` (jobs/compress.py) as PNG files.

    oml restore --input archive/ --output restored/
    oml restore --input s3://bucket/archive --output restored/ --select 'holidays/*.jpg' --verify --sources s3://bucket/photos
    oml restore --input archive/ --output window/ --select scans/big.tif --region 4096,2048,512,512

Exit status: 0 all restored (and verified), 1 some failed or differ, 2 bad arguments.
"""


def add_archive_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--input", required=True, help="folder or s3://bucket/prefix of images (recursive), or one image")
    p.add_argument("--output", required=True, help="archive folder or s3://bucket/prefix")
    add_coding_arguments(p)
    p.add_argument("--random-weights", action="store_true", help="untrained weights seeded by --seed (tests, smoke runs)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--extensions", nargs="+", help="file name endings to archive (default: .png .jpg .jpeg .webp .tif .tiff)")
    p.add_argument("--unit-tiles", type=int, default=64, help="tiles per unit of work, at most (default 64; a small collection is cut into up to 32 units, a power of two of them, of no fewer than 16 tiles)")
    _add_ray_arguments(p)
    p.add_argument("--cpus-per-worker", type=float, default=1.0)
    p.add_argument("--num-gpus", type=float, default=0.0, help="GPUs per worker (default 0)")
    p.add_argument("--max-retries", type=int, default=3, help="retries of a unit whose worker died")


def add_restore_arguments(p: argparse.ArgumentParser) -> None:
    from oml.names import METRICS, PLAIN

    p.add_argument("--input", required=True, help="archive folder or s3://bucket/prefix")
    p.add_argument("--output", required=True, help="folder or s3://bucket/prefix for the PNG files")
    p.add_argument("--select", nargs="+", default=[], metavar="PATTERN", help="source URIs, paths relative to the input, or globs (default: all)")
    p.add_argument("--verify", action="store_true", help="check the records' checksums, symbols and reconstruction hashes (and PSNR with --sources)")
    p.add_argument("--sources", help="folder or s3:// prefix holding the original files at their archived paths, for --verify's PSNR check")
    p.add_argument("--metric", choices=(PLAIN, *METRICS), help="which stored λ* set to decode with (default: the first)")
    p.add_argument("--psnr-tolerance", type=float, default=0.01, help="dB allowed between verified and recorded PSNR")
    p.add_argument("--weights", help="local oml weights file (default: as recorded in the archive)")
    p.add_argument("--region", type=region_arg, metavar="LEFT,TOP,WIDTH,HEIGHT", help="restore only this window of the one image --select names (decodes only the tiles it overlaps)")
    p.add_argument("--band-tiles", type=int, default=64, help="restore an image of more tiles in bands of about this many, one task each, streamed into one PNG (default 64)")
    _add_ray_arguments(p)


def _add_ray_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else start a local Ray)")
    p.add_argument("--num-cpus", type=int, help="CPUs of the local Ray this starts (default: all)")
    p.add_argument("--workers", type=int, help="tasks in flight at once (default: as resources allow)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar or lines")


def archive_parser(prog: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=ARCHIVE_DOC, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_archive_arguments(p)
    return p


def restore_parser(prog: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=RESTORE_DOC, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_restore_arguments(p)
    return p


def _compress_config(args: argparse.Namespace):
    from oml.names import DEFAULT_MAX_PIXELS
    from oml.ratecontrol import target_from
    from pipeline.archive import CodingConfig, CompressConfig, ModelConfig, RayConfig

    target = target_from(args.target_psnr, args.target_bpp)
    options = {"extensions": tuple(args.extensions)} if args.extensions else {}
    return CompressConfig(
        input=args.input,
        output=args.output,
        model=ModelConfig(args.model, args.weights, not args.random_weights, args.seed),
        coding=CodingConfig(
            args.quality or 3, args.steps, tuple(args.metric), args.tile, args.max_pixels or DEFAULT_MAX_PIXELS, args.lmbda,
            (target.kind, target.value) if target else None, args.refine,
        ),
        ray=RayConfig(args.address, args.num_cpus, args.workers, args.cpus_per_worker, args.num_gpus, args.max_retries),
        **options,
        unit_tiles=args.unit_tiles,
        progress=not args.no_progress,
    )


def _restore_config(args: argparse.Namespace):
    from oml.tiling import Region
    from pipeline.archive import DecompressConfig, ModelConfig, RayConfig

    return DecompressConfig(
        input=args.input,
        output=args.output,
        select=tuple(args.select),
        verify=args.verify,
        metric=args.metric,
        psnr_tolerance=args.psnr_tolerance,
        sources=args.sources,
        model=ModelConfig(weights=args.weights) if args.weights else None,
        ray=RayConfig(args.address, args.num_cpus, args.workers),
        progress=not args.no_progress,
        region=Region(*args.region) if args.region else None,
        band_tiles=args.band_tiles,
    )


def _run(prog: str, job: Callable[[], Any]) -> Any:
    """``job()``, or the exit status of the one line that reports why it could not run."""
    from oml.names import ModelUnavailableError
    from pipeline.storage import unreachable_errors

    try:
        return job()
    except (ValueError, FileNotFoundError, ModelUnavailableError) as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    except unreachable_errors() as exc:
        print(f"{prog}: error: storage unreachable or refused ({type(exc).__name__}): {exc}", file=sys.stderr)
        return 1


def run_archive(args: argparse.Namespace, prog: str) -> int:
    from pipeline.archive import run_compress

    report = _run(prog, lambda: run_compress(_compress_config(args)))
    if isinstance(report, int):
        return report
    print(
        f"archived {report.archived} of {report.images} images in {report.units} units "
        f"({report.units_written} written, {report.units_skipped} already committed); "
        f"{report.failed} failed (see {report.manifest_uri})"
    )
    coded, stored = report.summary["coded_bytes"], report.summary["stored_bytes"]
    if coded and report.summary["stored_bpp"] is not None:
        print(f"size: {coded} bytes coded, {stored} bytes of unit files ({stored / coded - 1:+.1%} container), {report.summary['stored_bpp']:.4f} bpp stored")
    for index, reason in report.units_failed:
        print(f"unit {index} did not finish: {reason}; run the same command again to retry it")
    print(f"summary: {report.summary_uri}")
    return report.exit_code


def run_restore(args: argparse.Namespace, prog: str) -> int:
    from pipeline.archive import run_decompress

    report = _run(prog, lambda: run_decompress(_restore_config(args)))
    if isinstance(report, int):
        return report
    read = sum(r.bytes_read for r in report.results)
    print(f"restored {report.restored} of {report.selected} images; {report.failed} failed, {report.mismatched} differ from compression time; "
          f"{read / 2**20:.2f} MiB of tiles files read")
    for r in report.results:
        if r.status != "ok":
            print(f"{r.status}: {r.path}: {r.reason}")
    print(f"summary: {report.summary_uri}")
    return report.exit_code


def job_main(kind: str, prog: str, argv: Sequence[str] | None = None) -> int:
    """Entry of ``jobs/compress.py`` (``kind="archive"``) and ``jobs/decompress.py`` (``"restore"``)."""
    args = (archive_parser if kind == "archive" else restore_parser)(prog).parse_args(argv)
    try:
        check_counts(args)  # `oml archive` runs the same check in pipeline.cli.main
    except UserError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    return run_archive(args, prog) if kind == "archive" else run_restore(args, prog)
