"""What the checkerboard context costs in time: v3 (with it) against v2 (without), in one run.

    python bench/context_time.py ../shared/data/kodak --images 8

Per image (whole Kodak images, 512² tiles, quality 3, no adaptation), ``codec.encode`` and
``codec.decode`` with the packaged v3 and v2 weights, alternating so that both see the same
machine state; the best of ``--repeats`` per image and model. Prints the mean times and the ratios.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("folder")
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--quality", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    from oml import codec
    from oml.imageio import decode_image
    from oml.models.zoo import load_model, packaged_weights

    torch.set_num_threads(args.threads)
    paths = {p.name: p for p in packaged_weights()}
    models = {label: load_model("oml-default", args.quality, weights=paths[name]) for label, name in (("v3", "oml-default.pt"), ("v2", "oml-default-v2.pt"))}
    assert models["v3"].kind == "checkerboard" and models["v2"].kind == "mean_scale"
    images = [decode_image(p.read_bytes()) for p in sorted(Path(args.folder).glob("*.png"))[: args.images]]
    times = {label: {"encode": [], "decode": [], "bytes": 0} for label in models}
    for image in images:
        best = {label: [float("inf"), float("inf")] for label in models}
        size = {}
        for _ in range(args.repeats):
            for label, model in models.items():
                t0 = time.perf_counter()
                data = codec.encode(model, image, quality=args.quality).data
                t1 = time.perf_counter()
                codec.decode(model, data)
                t2 = time.perf_counter()
                best[label] = [min(best[label][0], t1 - t0), min(best[label][1], t2 - t1)]
                size[label] = len(data)
        for label in models:
            times[label]["encode"].append(best[label][0])
            times[label]["decode"].append(best[label][1])
            times[label]["bytes"] += size[label]
    mean = {label: {k: sum(v) / len(v) for k, v in t.items() if k != "bytes"} for label, t in times.items()}
    print(f"{len(images)} images, quality {args.quality}, {args.threads} threads, best of {args.repeats}")
    print("| | encode s/img | decode s/img | bytes |\n|---|---|---|---|")
    for label in models:
        print(f"| {label} | {mean[label]['encode']:.3f} | {mean[label]['decode']:.3f} | {times[label]['bytes']} |")
    print(f"v3 / v2: encode {mean['v3']['encode'] / mean['v2']['encode']:.2f}×, decode {mean['v3']['decode'] / mean['v2']['decode']:.2f}×, "
          f"bytes {times['v3']['bytes'] / times['v2']['bytes']:.3f}×")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
