"""Restore images from an archive made by jobs/compress.py as PNG files.

    python jobs/decompress.py --input archive/ --output restored/
    python jobs/decompress.py --input s3://bucket/archive --output restored/ --select 'holidays/*.jpg' --verify --sources s3://bucket/photos
    python jobs/decompress.py --input archive/ --output window/ --select scans/big.tif --region 4096,2048,512,512

Exit status: 0 all restored (and verified), 1 some failed or differ, 2 bad arguments.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def build_parser() -> argparse.ArgumentParser:
    from pipeline.cli import region_arg  # light: loads no model code

    p = argparse.ArgumentParser(prog="decompress.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input", required=True, help="archive folder or s3://bucket/prefix")
    p.add_argument("--output", required=True, help="folder or s3://bucket/prefix for the PNG files")
    p.add_argument("--select", nargs="+", default=[], metavar="PATTERN", help="source URIs, paths relative to the input, or globs (default: all)")
    p.add_argument("--verify", action="store_true", help="check the records' checksums, symbols and reconstruction hashes (and PSNR with --sources)")
    p.add_argument("--sources", help="folder or s3:// prefix holding the original files at their archived paths, for --verify's PSNR check")
    p.add_argument("--metric", choices=("plain", "psnr", "ms-ssim"), help="which stored λ* set to decode with (default: the first)")
    p.add_argument("--psnr-tolerance", type=float, default=0.01, help="dB allowed between verified and recorded PSNR")
    p.add_argument("--weights", help="local oml weights file (default: as recorded in the archive)")
    p.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else start a local Ray)")
    p.add_argument("--num-cpus", type=int, help="CPUs of the local Ray this starts (default: all)")
    p.add_argument("--region", type=region_arg, metavar="LEFT,TOP,WIDTH,HEIGHT", help="restore only this window of the one image --select names (decodes only the tiles it overlaps)")
    p.add_argument("--workers", type=int, help="images in flight at once (default: as resources allow)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar or lines")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from oml.models.zoo import ModelUnavailableError
    from pipeline.storage import unreachable_errors
    from oml.tiling import Region
    from pipeline.archive import DecompressConfig, ModelConfig, RayConfig, run_decompress

    try:
        config = DecompressConfig(
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
        )
        report = run_decompress(config)
    except (ValueError, FileNotFoundError, ModelUnavailableError) as exc:
        print(f"decompress: error: {exc}", file=sys.stderr)
        return 2
    except unreachable_errors() as exc:
        print(f"decompress: error: storage unreachable or refused ({type(exc).__name__}): {exc}", file=sys.stderr)
        return 1
    print(f"restored {report.restored} of {report.selected} images; {report.failed} failed, {report.mismatched} differ from compression time")
    for r in report.results:
        if r.status != "ok":
            print(f"{r.status}: {r.path}: {r.reason}")
    print(f"summary: {report.summary_uri}")
    return report.exit_code


if __name__ == "__main__":
    raise SystemExit(main())
