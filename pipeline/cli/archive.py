"""``oml archive`` / ``oml restore``: the Ray jobs' one front end.

``jobs/compress.py`` and ``jobs/decompress.py`` (what ``ray job submit`` runs) are
``oml archive`` and ``oml restore`` under another name: both build their parser here, and the
coding flags come from :func:`pipeline.cli.args.add_coding_arguments`, the same function that builds
``oml compress``'s, so the single-file command and the archive cannot drift apart.

Importing this module loads no torch, CompressAI or Ray: ``--help`` and argument errors answer at once.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from pipeline.cli.args import UserError, add_coding_arguments, check_counts, non_negative_count, non_negative_number, positive_count, positive_number, region_arg


ARCHIVE_DOC = """Archive an image collection on Ray: every image under --input is cut into tiles, coded in units of tiles under --output.

    oml archive --input photos/ --output archive/ --quality 3 --steps 20
    ray job submit --working-dir . -- python jobs/compress.py --input s3://bucket/photos --output s3://bucket/archive

Run again with the same arguments to resume: committed units are skipped. Ctrl-C (or SIGTERM)
stops a run within seconds and keeps what was committed.
Exit status: 0 all archived, 1 some inputs or units failed (see the manifest), or storage failed
(full, read-only, refused the request, unreachable: one line), 2 bad arguments or a request the
Ray cluster cannot run (no head at the address; no node, and no node type its autoscaler may add,
with the CPUs and GPUs per worker), 130 stopped by Ctrl-C, 143 by SIGTERM.
"""


RESTORE_DOC = """Restore images from an archive made by `oml archive` (jobs/compress.py) as PNG files.

    oml restore --input archive/ --output restored/
    oml restore --input s3://bucket/archive --output restored/ --select 'holidays/*.jpg' --verify --sources s3://bucket/photos
    oml restore --input archive/ --output window/ --select scans/big.tif --region 4096,2048,512,512

An existing file at a restored image's name is left as it is unless it already holds exactly the
restored bytes (a repeated or resumed restore changes nothing); any other is reported as a failed
image, or replaced with --overwrite. An output that is the archive or its input folder (however
spelled: a link, a bind mount), or that would put restored images inside that input folder, is
refused before anything is written.

Exit status: 0 all restored (and verified), 1 some failed or differ, or storage failed (full,
read-only, refused the request, unreachable: one line), 2 bad arguments or a request the Ray
cluster cannot run, 130 stopped by Ctrl-C, 143 by SIGTERM.
"""


def add_archive_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--input", required=True, help="folder or s3://bucket/prefix of images (recursive), or one image")
    p.add_argument("--output", required=True, help="archive folder or s3://bucket/prefix")
    add_coding_arguments(p)
    p.add_argument("--random-weights", action="store_true", help="untrained weights seeded by --seed (tests, smoke runs)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--extensions", nargs="+", help="file name endings to archive (default: .png .jpg .jpeg .webp .tif .tiff)")
    p.add_argument("--unit-tiles", type=positive_count, default=64, help="tiles per unit of work, at most (default 64; a small collection is cut into up to 32 units, a power of two of them, of no fewer than 16 tiles)")
    _add_ray_arguments(p)
    p.add_argument("--cpus-per-worker", type=positive_number, default=1.0, help="CPUs per worker, and the coder's threads (default 1)")
    p.add_argument("--num-gpus", type=non_negative_number, default=0.0, help="GPUs per worker (default 0)")
    p.add_argument("--max-retries", type=non_negative_count, default=3, help="retries of a unit whose worker died or whose storage failed in a way that may mend (default 3)")


def add_restore_arguments(p: argparse.ArgumentParser) -> None:
    from oml.names import METRICS, PLAIN

    p.add_argument("--input", required=True, help="archive folder or s3://bucket/prefix")
    p.add_argument("--output", required=True, help="folder or s3://bucket/prefix for the PNG files")
    p.add_argument("--select", nargs="+", default=[], metavar="PATTERN", help="source URIs, paths relative to the input, or globs (default: all)")
    p.add_argument("--verify", action="store_true", help="check the records' checksums, symbols and reconstruction hashes (and PSNR with --sources)")
    p.add_argument("--sources", help="folder or s3:// prefix holding the original files at their archived paths, for --verify's PSNR check")
    p.add_argument("--metric", choices=(PLAIN, *METRICS), help="which stored λ* set to decode with (default: the first)")
    p.add_argument("--psnr-tolerance", type=non_negative_number, default=0.01, help="dB allowed between verified and recorded PSNR (a finite number >= 0)")
    p.add_argument("--weights", help="local oml weights file (default: as recorded in the archive)")
    p.add_argument("--region", type=region_arg, metavar="LEFT,TOP,WIDTH,HEIGHT", help="restore only this window of the one image --select names (decodes only the tiles it overlaps)")
    p.add_argument("--band-tiles", type=positive_count, default=64, help="restore an image of more tiles in bands of about this many, one task each, streamed into one PNG (default 64)")
    p.add_argument("--overwrite", action="store_true", help="replace files in the output that hold other bytes than the restored image (default: leave them and report the image; never a source of the archive)")
    _add_ray_arguments(p)


def _add_ray_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else start a local Ray)")
    p.add_argument("--num-cpus", type=positive_count, help="CPUs of the local Ray this starts (default: all)")
    p.add_argument("--workers", type=positive_count, help="tasks in flight at once (default: as resources allow)")
    p.add_argument(
        "--resource-wait", type=non_negative_number, default=600.0, metavar="SECONDS",
        help="when no node of the cluster can run a task yet but its autoscaler can add one, wait this long for it (default 600); "
        "a request no node can ever hold fails at once",
    )  # fmt: skip
    p.add_argument(
        "--shared-path", action="store_true",
        help="the local paths given are the same storage on every node of the Ray cluster (NFS, a shared volume); "
        "without it a cluster of several nodes refuses local paths, since each node would use its own disk",
    )  # fmt: skip
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
            (target.kind, target.value) if target else None, args.refine, args.to_srgb, args.quick, args.metadata_limit,
        ),
        ray=RayConfig(args.address, args.num_cpus, args.workers, args.cpus_per_worker, args.num_gpus, args.max_retries, args.resource_wait, args.shared_path),
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
        ray=RayConfig(args.address, args.num_cpus, args.workers, resource_wait=args.resource_wait, shared_path=args.shared_path),
        progress=not args.no_progress,
        region=Region(*args.region) if args.region else None,
        band_tiles=args.band_tiles,
        overwrite=args.overwrite,
    )


class Interrupted(KeyboardInterrupt):
    """The run was asked to stop by a signal other than ``SIGINT`` (``SIGTERM``): it ends as after Ctrl-C."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


@contextmanager
def _stoppable() -> Iterator[None]:
    """``SIGINT`` (Ctrl-C) and ``SIGTERM`` stop the run where it is, as an exception, so that Ray is
    shut down and what was committed stays: ``SIGINT`` even in a process started with it ignored
    (a script's background job inherits that), ``SIGTERM`` rather than by its default action, which
    skips every clean-up."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, frame: Any) -> None:
        raise Interrupted(signum)

    before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        for sig, handler in before.items():
            if handler is not None:
                signal.signal(sig, handler)


def _run(prog: str, job: Callable[[], Any]) -> Any:
    """``job()``, or the exit status of the one line that reports why it could not run or stopped:
    2 for what cannot run as asked, 1 for storage that failed, 128 + the signal's number for a
    stop asked for (130 after Ctrl-C, 143 after ``SIGTERM``)."""
    from oml.names import ModelUnavailableError
    from pipeline.archive.runner import ClusterError
    from pipeline.storage import explain, unreachable_errors

    try:
        with _stoppable():
            return job()
    except KeyboardInterrupt as exc:
        signum = getattr(exc, "signum", signal.SIGINT)
        print(f"{prog}: interrupted by {signal.Signals(signum).name}; what was finished is kept: run the same command again to go on", file=sys.stderr)
        return 128 + signum
    except ClusterError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    except (ValueError, FileNotFoundError, ModelUnavailableError) as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    except unreachable_errors() as exc:
        print(f"{prog}: error: {explain(exc)}", file=sys.stderr)
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
    for f in report.unlisted:
        print(f"not listed: {f.path}: {f.reason}", file=sys.stderr)
    for note in report.notes:
        print(f"note: {note}", file=sys.stderr)
    changed = report.summary["input_notes"]  # a bit depth reduced or colours converted on the way in: said, never silent
    if changed:
        path, notes = next(iter(changed.items()))
        print(f"{len(changed)} images changed on the way in (first {path}: {'; '.join(notes)}): listed under input_notes in the summary")
    cut = report.summary.get("metadata_cut", {})
    if cut:
        path, kinds = next(iter(cut.items()))
        print(f"{len(cut)} images had metadata over the size limit left out (first {path}: {', '.join(kinds)}): listed under metadata_cut in the summary")
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
    for note in report.notes:
        print(f"note: {note}", file=sys.stderr)
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
