"""Peak memory (RSS) of one archiving worker on a very large image.

    python bench/memory.py --sizes 2000 8000 --json docs/data/memory.json

For each size a synthetic photo-like PNG of size×size pixels is written, then a
fresh process runs exactly what a Ray worker runs for one unit of that image
(:class:`pipeline.archive.UnitEncoder` on the middle unit of ``--unit-tiles``
tiles: read, decode, code its tiles, write the Parquet files and the done marker)
and reports its peak RSS (``VmHWM``), its RSS with the model loaded and before
the image, and the time taken. The Ray worker process itself adds its own fixed
overhead.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _rss_mib(field: str = "VmRSS") -> float:
    """This process's resident memory (``VmRSS``) or its peak (``VmHWM``), MiB. The peak is not
    ``ru_maxrss``: that survives ``exec``, so a child forked from a large parent reports the
    parent's size."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def make_image(path: Path, size: int) -> None:
    """Smooth colour waves, edges and mild noise: compresses like a photo, costs no download."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(size)
    out = np.empty((size, size, 3), dtype=np.uint8)
    x = np.linspace(0, 1, size, dtype=np.float32)
    for top in range(0, size, 1000):  # by bands, so the generator itself stays small
        y = np.linspace(top / size, min(top + 1000, size) / size, min(1000, size - top), dtype=np.float32)[:, None]
        for c in range(3):
            band = 0.5 + 0.35 * np.sin(9 * x[None, :] + 5 * y * (c + 1) + c) + 0.03 * rng.standard_normal((len(y), size), dtype=np.float32)
            band[(y[:, 0] * 7 % 1 < 0.2), :] *= 0.6
            out[top : top + len(y), :, c] = (band.clip(0, 1) * 255).astype(np.uint8)
    Image.fromarray(out).save(path, compress_level=1)


def child(image: str, out: str, quality: int, steps: int, random: bool, unit_tiles: int, streamed: bool) -> None:
    """One worker's job on one unit of one image; prints a JSON line."""
    import torch

    from pipeline import archive, storage
    from pipeline.archive import regions
    from pipeline.archive import plan

    if not streamed:
        regions.pyvips = None  # Pillow's whole-image decode, as without pyvips installed
    torch.set_num_threads(1)
    model_cfg = archive.ModelConfig(pretrained=not random)
    coding = archive.CodingConfig(quality=quality, steps=steps, max_pixels=10**10)
    model = archive.get_model(model_cfg, quality)
    fingerprint = model.fingerprint(quality).hex()
    baseline = _rss_mib()
    encoder = archive.UnitEncoder(out, model_cfg, coding, fingerprint)
    [planned] = plan.probe_all(storage.list_files(image, (".png",)), coding.max_pixels)
    units = archive.make_units([planned], coding.tile, unit_tiles)
    start = time.perf_counter()
    result = encoder(units[len(units) // 2])
    seconds = time.perf_counter() - start
    if result.failures:
        raise RuntimeError(f"the unit was not archived: {result.failures}")
    peak = _rss_mib("VmHWM")
    print(json.dumps({"baseline_rss_mib": round(baseline, 1), "peak_rss_mib": round(peak, 1), "tiles": result.tiles,
                      "units": len(units), "seconds": round(seconds, 1), "worker_seconds": result.seconds}))  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[2000, 8000])
    parser.add_argument("--quality", type=int, default=3)
    parser.add_argument("--steps", type=int, default=0)
    parser.add_argument("--random-weights", action="store_true", help="default: packaged weights if present, else random")
    parser.add_argument("--unit-tiles", type=int, default=64, help="tiles per unit (default 64, as the jobs)")
    parser.add_argument("--no-regions", action="store_true", help="decode whole images with Pillow (as without pyvips)")
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--child", nargs=2, metavar=("IMAGE", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    from oml.models.zoo import default_weights_path

    random = args.random_weights or not default_weights_path().is_file()
    if args.child:
        child(*args.child, args.quality, args.steps, random, args.unit_tiles, not args.no_regions)
        return 0
    results = []
    with tempfile.TemporaryDirectory(prefix="oml-mem-") as tmp:
        for size in args.sizes:
            image = Path(tmp) / f"{size}.png"
            make_image(image, size)
            cmd = [sys.executable, __file__, "--child", str(image), str(Path(tmp) / f"archive-{size}"),
                   "--quality", str(args.quality), "--steps", str(args.steps), "--unit-tiles", str(args.unit_tiles)] + (["--random-weights"] if random else []) + (["--no-regions"] if args.no_regions else [])  # fmt: skip
            line = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
            r = {"size": size, "pixels": size * size, "source_bytes": image.stat().st_size, **json.loads(line)}
            results.append(r)
            raw = 3 * size * size / 2**20
            print(f"{size}x{size} (a unit of {r['tiles']} of its tiles, PNG {r['source_bytes'] / 2**20:.0f} MiB, raw RGB {raw:.0f} MiB): "
                  f"peak RSS {r['peak_rss_mib']:.0f} MiB (model loaded: {r['baseline_rss_mib']:.0f} MiB, "
                  f"+{(r['peak_rss_mib'] - r['baseline_rss_mib']) / raw:.1f}x raw image), {r['seconds']:.0f} s", flush=True)  # fmt: skip
    print(f"weights: {'random (seed 0)' if random else 'packaged'}, quality {args.quality}, {args.steps} adaptation steps, units of {args.unit_tiles} tiles")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"random_weights": random, "quality": args.quality, "steps": args.steps, "unit_tiles": args.unit_tiles, "runs": results}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
