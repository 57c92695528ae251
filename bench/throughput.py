"""Archiving throughput on the 24 Kodak images with 1 and 2 Ray workers, and the per-tile time split.

    python bench/throughput.py --steps 2 --json docs/data/throughput.json
    python bench/throughput.py --steps 2 --min-unit-tiles 1    # one image per unit, as before the floor

Both runs use one local Ray (as many CPUs as the most workers asked for) whose
workers are warmed up first (torch imported, model loaded), and the jobs' default
units: 24 images of 2 tiles make 2 units of 24 tiles (a power of two of units of at
least 16 tiles); ``--min-unit-tiles 1`` cuts one image per unit (24 units: at least
32 wanted), as the jobs did before the floor. Throughput is images/s of the whole
``run_compress`` call; the ratio is the 2-worker rate over the 1-worker rate.

The split: the workers time reading, decoding, coding and writing each unit
(``summary.json``); coding is split further, in this process, by timing the
codec's parts on --split-images images: analysis ``g_a``, entropy coding (the
hyperprior and the range coder), the λ* search, and the rest (the synthesis of
the plain and final reconstructions, packing).
Without --weights the default model's packaged weights are used when present,
else seeded random weights (same architecture, so about the same cost).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.archive.config import MIN_UNIT_TILES  # noqa: E402


def model_config(weights: str | None):
    from oml.models.zoo import default_weights_path
    from pipeline.archive import ModelConfig

    if weights:
        return ModelConfig(weights=weights)
    if default_weights_path().is_file():
        return ModelConfig()
    return ModelConfig(pretrained=False, seed=0)


def throughput(kodak: str, model, coding, workers: int, out: Path, min_unit_tiles: int) -> dict:
    from pipeline.archive import CompressConfig, RayConfig, run_compress

    config = CompressConfig(kodak, str(out), model=model, coding=coding, ray=RayConfig(num_workers=workers), progress=False, min_unit_tiles=min_unit_tiles)
    report = run_compress(config)
    if report.failed or report.units_failed:
        raise RuntimeError(f"{report.failed} images failed; see {report.manifest_uri}")
    run = report.summary["last_run"]
    return {
        "workers": workers,
        "images": report.archived,
        "seconds": run["seconds"],
        "images_per_second": report.archived / run["seconds"],
        "tiles": run["tiles"],
        "units": report.units,
        "stored_bytes": report.summary["stored_bytes"],
        "coded_bytes": report.summary["coded_bytes"],
        "worker_seconds": run["worker_seconds"],
        "mean_bpp": report.summary["mean_bpp"],
        "mean_delta_psnr": report.summary["mean_delta_psnr"],
    }


class _Timed:
    """Wrap ``owner.name`` so its calls add their wall time to ``totals[label]``."""

    def __init__(self, owner, name: str, label: str, totals: dict[str, float]) -> None:
        self.owner, self.name, self.original = owner, name, getattr(owner, name)
        original = self.original

        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                totals[label] = totals.get(label, 0.0) + time.perf_counter() - start

        setattr(owner, name, timed)

    def restore(self) -> None:
        setattr(self.owner, self.name, self.original)


def coding_split(files: list[Path], model_cfg, coding) -> dict[str, float]:
    """Seconds per tile of each part of coding, on ``files``, in this process."""
    from oml import codec, tiling
    from oml.imageio import decode_image
    from oml.models import latent, variable_rate
    from pipeline import archive

    model = archive.get_model(model_cfg, coding.quality)
    totals: dict[str, float] = {}
    patches = [
        _Timed(variable_rate.VariableRateModel, "analyze", "analysis", totals),
        _Timed(latent.LatentCodec, "encode", "entropy coding", totals),
        _Timed(codec, "_adapt_batch", "adaptation", totals),
    ]
    tiles, coding_total = 0, 0.0
    try:
        for path in files:
            image = decode_image(path.read_bytes())
            start = time.perf_counter()
            _, coded = archive.encode_rect(model, image, coding, tiling.Tile(0, 0, *image.shape[1:]), *image.shape[1:])
            coding_total += time.perf_counter() - start
            tiles += len(coded)
    finally:
        for p in patches:
            p.restore()
    totals["synthesis and packing"] = coding_total - sum(totals.values())
    return {k: v / tiles for k, v in totals.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kodak", default=str(ROOT.parent / "shared" / "data" / "kodak"))
    parser.add_argument("--weights", help="oml weights file (default: packaged weights, else random)")
    parser.add_argument("--quality", type=int, default=3)
    parser.add_argument("--steps", type=int, default=2, help="adaptation iterations per tile")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--split-images", type=int, default=4, help="images for the in-process coding split")
    parser.add_argument("--min-unit-tiles", type=int, default=MIN_UNIT_TILES, help=f"the units' floor in tiles (default {MIN_UNIT_TILES}, as the jobs)")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args(argv)

    import ray
    import torch

    from pipeline.archive import CodingConfig

    torch.set_num_threads(1)
    model = model_config(args.weights)
    coding = CodingConfig(quality=args.quality, steps=args.steps)
    files = sorted(Path(args.kodak).glob("*.png"))
    scratch = Path(tempfile.mkdtemp(prefix="oml-bench-"))
    results: dict = {"model": "random weights (seed 0)" if not model.pretrained and not model.weights else (model.weights or "packaged"),
                     "quality": args.quality, "steps": args.steps, "images": len(files), "cpus": os.cpu_count(),
                     "min_unit_tiles": args.min_unit_tiles}  # fmt: skip
    ray.init(num_cpus=max(args.workers), include_dashboard=False, log_to_driver=False)
    try:
        warm = scratch / "warm-in"
        warm.mkdir()
        for f in files[: max(args.workers)]:
            shutil.copy(f, warm)
        # one image per unit here, so that every worker gets a unit and loads the model
        throughput(str(warm), model, CodingConfig(quality=args.quality, steps=0), max(args.workers), scratch / "warm-out", 1)
        results["load_before"] = os.getloadavg()
        results["runs"] = [throughput(args.kodak, model, coding, n, scratch / f"out-{n}", args.min_unit_tiles) for n in args.workers]
        results["load_after"] = os.getloadavg()
    finally:
        ray.shutdown()
        shutil.rmtree(scratch, ignore_errors=True)
    results["coding_seconds_per_tile"] = coding_split(files[: args.split_images], model, coding)
    report(results)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n")
    return 0


def report(results: dict, out: Callable[[str], None] = print) -> None:
    out(f"model {results['model']}, quality {results['quality']}, {results['steps']} adaptation steps, "
        f"{results['images']} Kodak images, {results['cpus']} CPUs, load average before {results['load_before'][0]:.2f}")  # fmt: skip
    r = results["runs"][0]
    out(f"{r['units']} units (floor {results.get('min_unit_tiles', 1)} tiles); unit files {r['stored_bytes'] / r['coded_bytes'] - 1:+.1%} over the coded bytes")
    base = results["runs"][0]["images_per_second"]
    for r in results["runs"]:
        out(f"{r['workers']} worker(s): {r['images']} images in {r['seconds']:.1f} s = {r['images_per_second']:.3f} images/s "
            f"({r['images_per_second'] / base:.2f}x), mean {r['mean_bpp']:.4f} bpp, mean ΔPSNR {r['mean_delta_psnr']:+.3f} dB")  # fmt: skip
    r = results["runs"][0]
    out(f"per tile, worker stages ({r['workers']} worker run, {r['tiles']} tiles): "
        + ", ".join(f"{k} {1000 * v / r['tiles']:.1f} ms" for k, v in r["worker_seconds"].items()))
    out("per tile, inside coding: " + ", ".join(f"{k} {1000 * v:.1f} ms" for k, v in results["coding_seconds_per_tile"].items()))


if __name__ == "__main__":
    sys.exit(main())
