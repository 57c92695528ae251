"""Decoded images per second per CPU core: an archive read through ``ArchiveDataset`` against the same
images read from JPEG (quality 90) and AVIF files with Pillow, in one run on one core.

    python bench/dataset_read.py --images 12 [--kodak ../shared/data/kodak] [--random-weights] [--json out.json]

The images (Kodak, 768×512) are archived once with `oml archive` (--steps 0: reading does not depend
on how long the encoder searched), written as JPEG q90 and AVIF (Pillow, quality --avif-quality), and
then each reader decodes every image to uint8 (3, H, W) pixels, in one process with one torch and
one Pillow thread, repeated until --seconds have passed; the first pass is a warm-up (the model's
load, the files' page cache). ArchiveDataset reads with every check a restore makes.
"""

from __future__ import annotations

import argparse
import io
import json
import shlex
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def rate(read_all, count: int, seconds: float) -> tuple[float, int]:
    read_all()  # warm-up
    passes, start = 0, time.perf_counter()
    while passes == 0 or time.perf_counter() - start < seconds:
        read_all()
        passes += 1
    return passes * count / (time.perf_counter() - start), passes


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kodak", default=str(ROOT.parent / "shared" / "data" / "kodak"))
    p.add_argument("--images", type=int, default=12)
    p.add_argument("--quality", type=int, default=3, help="oml quality of the archive")
    p.add_argument("--avif-quality", type=int, default=60)
    p.add_argument("--random-weights", action="store_true", help="untrained weights (no download; same decoder cost)")
    p.add_argument("--seconds", type=float, default=10.0, help="time each reader at least this long")
    p.add_argument("--json", help="write the numbers here")
    args = p.parse_args()
    torch.set_num_threads(1)
    from PIL import AvifImagePlugin

    AvifImagePlugin.DEFAULT_MAX_THREADS = 1  # libavif would use every core: one, like the others

    from pipeline.cli.command import main as oml
    from pipeline.dataset import ArchiveDataset

    sources = sorted(Path(args.kodak).glob("*.png"))[: args.images]
    if not sources:
        print(f"no PNG images in {args.kodak}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "png").mkdir()
        jpegs, avifs = [], []
        for src in sources:
            (tmp / "png" / src.name).write_bytes(src.read_bytes())
            image = Image.open(src).convert("RGB")
            for fmt, suffix, files, options in (("JPEG", ".jpg", jpegs, {"quality": 90}), ("AVIF", ".avif", avifs, {"quality": args.avif_quality})):
                out = tmp / (src.stem + suffix)
                image.save(out, fmt, **options)
                files.append(out)
        argv = ["archive", "--input", str(tmp / "png"), "--output", str(tmp / "archive"), "-q", str(args.quality), "--steps", "0",
                "--no-progress", *(["--random-weights"] if args.random_weights else [])]
        if oml(argv) != 0:
            print("archiving failed", file=sys.stderr)
            return 1
        data = ArchiveDataset(str(tmp / "archive"))
        pixels = sum(e.width * e.height for e in data.archive)

        def read_archive_all() -> None:
            for sample in data:
                assert sample["image"].dtype == torch.uint8

        def pillow(files):
            def read_all() -> None:
                for f in files:
                    with Image.open(io.BytesIO(f.read_bytes())) as im:
                        array = np.array(im.convert("RGB"))
                    torch.from_numpy(array).permute(2, 0, 1)
            return read_all

        sizes = {
            "oml archive (units' Parquet files)": sum(f.stat().st_size for f in (tmp / "archive" / "units").glob("*.parquet")),
            "JPEG q90": sum(f.stat().st_size for f in jpegs),
            f"AVIF q{args.avif_quality}": sum(f.stat().st_size for f in avifs),
        }
        results = {}
        for name, reader in (
            ("oml archive (units' Parquet files)", read_archive_all),
            ("JPEG q90", pillow(jpegs)),
            (f"AVIF q{args.avif_quality}", pillow(avifs)),
        ):
            per_second, passes = rate(reader, len(sources), args.seconds)
            results[name] = {"images_per_s_per_core": per_second, "passes": passes, "bytes": sizes[name], "bpp": 8 * sizes[name] / pixels}
    command = "python " + " ".join(shlex.quote(a) for a in ["bench/dataset_read.py", *sys.argv[1:]])
    print(f"{len(sources)} Kodak images (768x512), one core (torch and Pillow single-threaded), {'random' if args.random_weights else 'shipped'} weights:")
    for name, r in results.items():
        print(f"  {name:36s} {r['images_per_s_per_core']:8.2f} images/s/core   {r['bpp']:.3f} bpp ({r['passes']} passes)")
    archive = results["oml archive (units' Parquet files)"]["images_per_s_per_core"]
    for name, r in results.items():
        if not name.startswith("oml"):
            print(f"  ratio oml / {name}: {archive / r['images_per_s_per_core']:.4f} (the archive is {r['images_per_s_per_core'] / archive:.1f}x slower)")
    print(f"command: {command}")
    if args.json:
        Path(args.json).write_text(json.dumps({"command": command, "images": len(sources), "results": results}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
