"""Archive an image collection on Ray: every image under --input is cut into tiles, coded in units of tiles under --output.

    python jobs/compress.py --input photos/ --output archive/ --quality 3 --steps 20
    ray job submit --working-dir . -- python jobs/compress.py --input s3://bucket/photos --output s3://bucket/archive

Run again with the same arguments to resume: committed units are skipped.
Exit status: 0 all archived, 1 some inputs or units failed (see the manifest), 2 bad arguments.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="compress.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input", required=True, help="folder or s3://bucket/prefix of images (recursive), or one image")
    p.add_argument("--output", required=True, help="archive folder or s3://bucket/prefix")
    rate = p.add_mutually_exclusive_group()
    rate.add_argument("--quality", type=int, help="quality (default 3)")
    rate.add_argument("--lmbda", type=float, help="code every image at this λ (λ-conditioned models: any value in range)")
    rate.add_argument("--target-psnr", type=float, metavar="DB", help="per image, the λ whose file decodes closest to this PSNR (within 0.1 dB)")
    rate.add_argument("--target-bpp", type=float, metavar="BPP", help="per image, the λ whose file is closest to this size (within 3 %%)")
    p.add_argument("--steps", type=int, default=0, help="online-adaptation iterations per tile (default 0: none)")
    p.add_argument("--refine", type=int, default=0, metavar="N", help="latent-refinement iterations per tile (default 0: none; slower encoding, same decoder)")
    p.add_argument("--metric", nargs="+", default=["psnr"], choices=("psnr", "ms-ssim"), help="adapt for these metrics; one λ* set each")
    p.add_argument("--model", default="oml-default", help="model id (default oml-default)")
    p.add_argument("--weights", help="local oml weights file, present on every node")
    p.add_argument("--random-weights", action="store_true", help="untrained weights seeded by --seed (tests, smoke runs)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tile", type=int, default=512, help="tile size in pixels (multiple of 64)")
    p.add_argument("--max-pixels", type=int, help="refuse larger images (default: the codec's limit)")
    p.add_argument("--extensions", nargs="+", help="file name endings to archive (default: .png .jpg .jpeg .webp .tif .tiff)")
    p.add_argument("--unit-tiles", type=int, default=64, help="tiles per unit of work (default 64; fewer when the collection has under 32 units' worth)")
    _add_ray_arguments(p)
    return p


def _add_ray_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else start a local Ray)")
    p.add_argument("--num-cpus", type=int, help="CPUs of the local Ray this starts (default: all)")
    p.add_argument("--workers", type=int, help="tasks in flight at once (default: as resources allow)")
    p.add_argument("--cpus-per-worker", type=float, default=1.0)
    p.add_argument("--num-gpus", type=float, default=0.0, help="GPUs per worker (default 0)")
    p.add_argument("--max-retries", type=int, default=3, help="retries of a unit whose worker died")
    p.add_argument("--no-progress", action="store_true", help="no progress bar or lines")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from oml.imageio import DEFAULT_MAX_PIXELS
    from oml.models.zoo import ModelUnavailableError
    from pipeline.storage import unreachable_errors
    from oml.ratecontrol import target_from
    from pipeline.archive import CodingConfig, CompressConfig, ModelConfig, RayConfig, run_compress

    try:
        target = target_from(args.target_psnr, args.target_bpp)
        options = {"extensions": tuple(args.extensions)} if args.extensions else {}
        config = CompressConfig(
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
        report = run_compress(config)
    except (ValueError, FileNotFoundError, ModelUnavailableError) as exc:
        print(f"compress: error: {exc}", file=sys.stderr)
        return 2
    except unreachable_errors() as exc:
        print(f"compress: error: storage unreachable or refused ({type(exc).__name__}): {exc}", file=sys.stderr)
        return 1
    print(
        f"archived {report.archived} of {report.images} images in {report.units} units "
        f"({report.units_written} written, {report.units_skipped} already committed); "
        f"{report.failed} failed (see {report.manifest_uri})"
    )
    for index, reason in report.units_failed:
        print(f"unit {index} did not finish: {reason}; run the same command again to retry it")
    print(f"summary: {report.summary_uri}")
    return report.exit_code


if __name__ == "__main__":
    raise SystemExit(main())
