"""Scaling of the archive job over tiles: huge images and a collection, 1 against 2 workers; region
decode against a full decode; per-worker peak memory over image sizes.

    python bench/scale.py --json docs/data/scale.json

- Huge images: one 4096² and one 8192² image (Kodak photographs tiled edge to edge, mirrored, so
  the content codes like photographs), archived with 1 and then 2 workers: wall-time ratio.
- Kodak: the 24 images with 1 and 2 workers: speed-up.
- Region decode: a 512² window in the middle of the archived 8192² image (jobs' ``--region``)
  against restoring the whole image: seconds of the Ray job and of the decode alone, and bytes of
  tiles files read.
- Restore: the whole huge-image archive restored with 1 and then 2 workers (each image over 64
  tiles is restored in bands, one task each, streamed into one PNG): wall-time ratio.
- Memory: ``bench/memory.py`` (one unit of the default 64 tiles of a size² image, in a fresh
  process) with streamed region reads (pyvips) and with Pillow's whole-image decode.

One local Ray of 2 CPUs, workers warmed up first; packaged weights when present, else random.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
KODAK = ROOT.parent / "shared" / "data" / "kodak"


def tiled_kodak(path: Path, size: int) -> None:
    """A size×size PNG of Kodak photographs laid edge to edge (every other one mirrored)."""
    import numpy as np
    from PIL import Image

    photos = [np.asarray(Image.open(p).convert("RGB")) for p in sorted(KODAK.glob("*.png"))]
    photos = [p.transpose(1, 0, 2) if p.shape[0] > p.shape[1] else p for p in photos]  # portrait ones laid on their side
    out = np.empty((size, size, 3), dtype=np.uint8)
    n = 0
    for top in range(0, size, 512):
        for left in range(0, size, 768):
            photo = photos[n % len(photos)][:, ::-1] if n % 2 else photos[n % len(photos)]
            h, w = min(512, size - top), min(768, size - left)
            out[top : top + h, left : left + w] = photo[:h, :w]
            n += 1
    Image.fromarray(out).save(path, compress_level=1)


def compress(inp: Path, out: Path, model, workers: int, quality: int) -> dict:
    from pipeline.archive import CodingConfig, CompressConfig, RayConfig, run_compress

    config = CompressConfig(str(inp), str(out), model=model, coding=CodingConfig(quality=quality, max_pixels=2**30), ray=RayConfig(num_workers=workers), progress=False)
    start = time.perf_counter()
    report = run_compress(config)
    seconds = time.perf_counter() - start
    if report.failed or report.units_failed:
        raise RuntimeError(f"{report.failed} images failed; see {report.manifest_uri}")
    s = report.summary
    return {"workers": workers, "seconds": round(seconds, 2), "images": report.archived, "tiles": s["tiles"], "units": report.units,
            "worker_seconds": s["last_run"]["worker_seconds"], "mean_bpp": s["mean_bpp"]}  # fmt: skip


def restore(archive: Path, out: Path, workers: int) -> dict:
    from pipeline.archive import DecompressConfig, RayConfig, run_decompress

    start = time.perf_counter()
    report = run_decompress(DecompressConfig(str(archive), str(out), ray=RayConfig(num_workers=workers), progress=False))
    seconds = time.perf_counter() - start
    if report.exit_code:
        raise RuntimeError(f"restore failed: {[r.reason for r in report.results if r.status != 'ok']}")
    return {"workers": workers, "seconds": round(seconds, 2), "images": report.restored, "bands": sum(r.checks.get("bands", 1) for r in report.results)}


def region_decode(archive: Path, scratch: Path, name: str, size: int) -> dict:
    """Restore ``name`` whole and a 512² window in its middle: seconds of the Ray jobs and of the
    decoding alone, tiles decoded, bytes of tiles files read (as the jobs report them); and what
    the row groups that let a window read less cost in storage (the same tiles files written as
    one row group each, as archives written before row-group spans were)."""
    from oml import codec, tiling
    from pipeline.archive import schema
    from pipeline import storage
    from pipeline.archive import DecompressConfig, ModelConfig, get_model, run_decompress
    from pipeline.archive.decompress import catalogue

    region = tiling.Region(size // 2 - 256, size // 2 - 256, 512, 512)
    out = {"image": f"{size}x{size}", "region": list(region)}
    for label, reg in (("full", None), ("region", region)):
        start = time.perf_counter()
        report = run_decompress(DecompressConfig(str(archive), str(scratch / label), select=(name,), region=reg, progress=False))
        assert report.exit_code == 0, report.results
        out[f"{label}_job_seconds"] = round(time.perf_counter() - start, 2)
        out[f"{label}_bytes_read"] = report.results[0].bytes_read
    found = catalogue(str(archive), storage.read_json(str(archive / "plan.json")))
    row, sources = found.rows[name], found.tiles[name]
    header = schema.header_of(row)
    grid = tiling.tile_grid(header.height, header.width, header.tile)
    wanted = set(tiling.overlapping(grid, region))
    needed = [s for s in sources if any(s.first <= i < s.first + s.count for i in wanted)]
    tables = {s.uri: schema.read_parquet(storage.read_bytes(s.uri)).to_pylist() for s in sources}
    one_group = sum(len(schema.to_parquet(t, schema.TILE_SCHEMA)) for t in tables.values())
    out.update(tiles=len(grid), region_tiles=len(wanted), units=len(sources), region_units=len(needed),
               tiles_files_bytes=sum(s.size for s in sources), one_group_bytes=one_group)  # fmt: skip
    tiles = [t for table in tables.values() for t in table if t["path"] == name]
    model = get_model(ModelConfig(**storage.read_json(str(archive / "plan.json"))["model"]), row["quality"] or 1)
    data = schema.coded_bytes(row, tiles)
    start = time.perf_counter()
    codec.decode_window(model, header, {t["index"]: schema.record_of(t, header) for t in tiles if t["index"] in wanted}, region)
    out["region_decode_seconds"] = round(time.perf_counter() - start, 2)
    start = time.perf_counter()
    codec.decode(model, data)
    out["full_decode_seconds"] = round(time.perf_counter() - start, 2)
    return out


def memory(sizes: list[int], quality: int) -> list[dict]:
    rows = []
    for streamed in (True, False):
        with tempfile.TemporaryDirectory(prefix="oml-scale-mem-") as tmp:
            cmd = [sys.executable, str(ROOT / "bench" / "memory.py"), "--sizes", *map(str, sizes), "--quality", str(quality), "--json", f"{tmp}/m.json"]
            subprocess.run(cmd + ([] if streamed else ["--no-regions"]), check=True, capture_output=True, text=True)
            for r in json.loads(Path(f"{tmp}/m.json").read_text())["runs"]:
                rows.append({"reads": "pyvips band" if streamed else "Pillow whole image", **r})
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[4096, 8192], help="the huge images (one each)")
    parser.add_argument("--memory-sizes", type=int, nargs="*", default=[2048, 4096, 8192, 16384])
    parser.add_argument("--quality", type=int, default=3)
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--memory-only", action="store_true", help="redo only the memory part of the --json file")
    parser.add_argument("--region-size", type=int, metavar="N", help="only archive one N² image (2 workers, default units) and "
                        "restore a 512² window of it against the whole; added to the --json file as region_decode_large")
    args = parser.parse_args(argv)
    if args.memory_only:
        results = {**json.loads(Path(args.json).read_text()), "memory": memory(args.memory_sizes, args.quality)}
        save(results, args.json)
        report(results)
        return 0

    import ray
    import torch

    sys.path.insert(0, str(ROOT / "bench"))
    from throughput import model_config

    torch.set_num_threads(1)
    model = model_config(None)
    if args.region_size:
        return large_region(args, model)
    results: dict = {"model": "packaged" if model.pretrained else "random weights (seed 0)", "quality": args.quality, "cpus": os.cpu_count()}
    scratch = Path(tempfile.mkdtemp(prefix="oml-scale-"))
    huge = scratch / "huge"
    huge.mkdir()
    for size in args.sizes:
        tiled_kodak(huge / f"{size}.png", size)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        warm = scratch / "warm"
        warm.mkdir()
        (warm / "a.png").write_bytes((KODAK / "kodim01.png").read_bytes())
        compress(warm, scratch / "warm-out", model, 2, args.quality)
        results["load_before"] = os.getloadavg()
        results["huge"] = [compress(huge, scratch / f"huge-{n}", model, n, args.quality) for n in (1, 2)]
        results["kodak"] = [compress(KODAK, scratch / f"kodak-{n}", model, n, args.quality) for n in (1, 2)]
        results["restore"] = [restore(scratch / "huge-2", scratch / f"restore-{n}", n) for n in (1, 2)]
        results["load_after"] = os.getloadavg()
        results["region_decode"] = region_decode(scratch / "huge-2", scratch / "restored", f"{max(args.sizes)}.png", max(args.sizes))
    finally:
        ray.shutdown()
    save(results, args.json)  # the runs so far, should the memory part fail
    results["memory"] = memory(args.memory_sizes, args.quality) if args.memory_sizes else []
    save(results, args.json)
    report(results)
    return 0


def large_region(args, model) -> int:
    import ray

    scratch = Path(tempfile.mkdtemp(prefix="oml-scale-region-"))
    (scratch / "in").mkdir()
    name = f"{args.region_size}.png"
    tiled_kodak(scratch / "in" / name, args.region_size)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        coded = compress(scratch / "in", scratch / "archive", model, 2, args.quality)
        result = {"archive": coded, **region_decode(scratch / "archive", scratch / "restored", name, args.region_size)}
    finally:
        ray.shutdown()
    results = json.loads(Path(args.json).read_text()) if args.json and Path(args.json).exists() else {}
    save(results | {"region_decode_large": result}, args.json)
    report({"region_decode_large": result})
    return 0


def save(results: dict, path: str | None) -> None:
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(results, indent=1) + "\n")


def report(r: dict) -> None:
    if "huge" not in r:
        return report_regions(r)
    h1, h2 = r["huge"]
    print(f"model {r['model']}, quality {r['quality']}, {r['cpus']} CPUs, load average before {r['load_before'][0]:.2f}, after {r['load_after'][0]:.2f}")
    print(f"huge images ({h1['tiles']} tiles, {h1['units']} units): 1 worker {h1['seconds']:.1f} s, 2 workers {h2['seconds']:.1f} s, ratio {h2['seconds'] / h1['seconds']:.2f}")
    k1, k2 = r["kodak"]
    print(f"Kodak ({k1['tiles']} tiles, {k1['units']} units): 1 worker {k1['seconds']:.1f} s, 2 workers {k2['seconds']:.1f} s, speed-up {k1['seconds'] / k2['seconds']:.2f}x")
    if "restore" in r:
        r1, r2 = r["restore"]
        print(f"restore of the huge images ({r1['bands']} bands): 1 worker {r1['seconds']:.1f} s, 2 workers {r2['seconds']:.1f} s, ratio {r2['seconds'] / r1['seconds']:.2f}")
    report_regions(r)
    for m in r["memory"]:
        print(f"{m['size']}² {m['reads']}: peak RSS {m['peak_rss_mib']:.0f} MiB (model loaded {m['baseline_rss_mib']:.0f} MiB), a unit of {m['tiles']} tiles in {m['seconds']:.0f} s")


def report_regions(r: dict) -> None:
    for d in [r[k] for k in ("region_decode", "region_decode_large") if k in r]:
        print(f"region {d['region']} of {d['image']}: job {d['region_job_seconds']:.1f} s vs {d['full_job_seconds']:.1f} s; decode {d['region_decode_seconds']:.2f} s vs "
              f"{d['full_decode_seconds']:.1f} s; {d['region_tiles']} of {d['tiles']} tiles; tiles files read {d['region_bytes_read'] / 2**20:.3f} MiB "
              f"({d['region_units']} of {d['units']} units) vs {d['full_bytes_read'] / 2**20:.2f} MiB")  # fmt: skip
        if "one_group_bytes" in d:
            print(f"  row groups of {d['image']}'s tiles files: {d['tiles_files_bytes']} bytes against {d['one_group_bytes']} in one group each "
                  f"({100 * (d['tiles_files_bytes'] / d['one_group_bytes'] - 1):+.2f} %)")


if __name__ == "__main__":
    sys.exit(main())
