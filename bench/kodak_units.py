"""How the unit floor cuts Kodak: units, container overhead, and 2-worker speed-up, per floor.

    python bench/kodak_units.py --floors 16 12 6 1 --repeats 2     # about 2 minutes a floor on 2 cores

For each ``min_unit_tiles`` (1: one image per unit, the cut before the floor), the 24 Kodak
images are archived at quality 3 without adaptation with 1 and then 2 workers of one local Ray
(warmed up first), ``--repeats`` times. Prints the units, the units' Parquet files over the coded
bytes, and each repeat's 1-worker / 2-worker wall times and their ratio. A run lasts seconds, so
the ratio moves by about ±0.2 between repeats (docs/RESULTS.md §9).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kodak", default=str(ROOT.parent / "shared" / "data" / "kodak"))
    parser.add_argument("--floors", type=int, nargs="+", default=[16, 1], help="min_unit_tiles values to compare")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args(argv)

    import ray
    import torch

    from pipeline.archive import CodingConfig, CompressConfig, RayConfig, run_compress
    from throughput import model_config

    torch.set_num_threads(1)
    model = model_config(None)
    scratch = Path(tempfile.mkdtemp(prefix="oml-kodak-units-"))

    def run(floor: int, workers: int, name: str) -> tuple[float, int, float]:
        cfg = CompressConfig(args.kodak, str(scratch / name), model=model, coding=CodingConfig(quality=3), ray=RayConfig(num_workers=workers),
                             progress=False, min_unit_tiles=floor)  # fmt: skip
        start = time.perf_counter()
        report = run_compress(cfg)
        seconds = time.perf_counter() - start
        if report.failed or report.units_failed:
            raise RuntimeError(f"{report.failed} images failed; see {report.manifest_uri}")
        return seconds, report.units, report.summary["stored_bytes"] / report.summary["coded_bytes"] - 1

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        run(1, 2, "warm")  # every worker loads the model
        for floor in args.floors:
            times = []
            for rep in range(args.repeats):
                one, units, over = run(floor, 1, f"{floor}-1-{rep}")
                two, _, _ = run(floor, 2, f"{floor}-2-{rep}")
                times.append(f"{one:.1f} s / {two:.1f} s = {one / two:.2f}x")
            print(f"floor {floor}: {units} units, unit files {over:+.1%} over the coded bytes; 1 / 2 workers: {', '.join(times)}", flush=True)
    finally:
        ray.shutdown()
        shutil.rmtree(scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
