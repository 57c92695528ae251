"""Encode and decode time with online adaptation, as ratios to no adaptation, measured in one run.

For each image the encoder runs with N = 0 and every N of --steps, interleaved so
machine noise hits all settings alike; the decoder runs on each result.

    python bench/adapt_speed.py --images 4 --steps 5 20 99 --quality 1
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from oml import codec
from oml.adapt import AdaptConfig
from oml.imageio import decode_image
from oml.models.zoo import load_model

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kodak", default=str(ROOT.parent / "shared" / "data" / "kodak"))
    parser.add_argument("--weights", default=None)
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--quality", type=int, default=1)
    parser.add_argument("--steps", type=int, nargs="+", default=[5, 20, 99])
    parser.add_argument("--metric", default="psnr", choices=["psnr", "ms-ssim"])
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = load_model("oml-default", weights=args.weights)
    settings = [0, *args.steps]
    enc = {n: 0.0 for n in settings}
    dec = {n: 0.0 for n in settings}
    paths = sorted(Path(args.kodak).glob("*.png"))[: args.images]
    for path in paths:
        image = decode_image(path.read_bytes())
        for n in settings:
            t0 = time.perf_counter()
            out = codec.encode(model, image, quality=args.quality, adapt_config=AdaptConfig(steps=n, metrics=(args.metric,)))
            t1 = time.perf_counter()
            codec.decode(model, out.data)
            t2 = time.perf_counter()
            enc[n] += t1 - t0
            dec[n] += t2 - t1
        print(f"{path.name}: " + ", ".join(f"N={n} {enc[n]:.1f}s" for n in settings), flush=True)
    result = {
        "images": len(paths), "quality": args.quality, "metric": args.metric, "threads": args.threads,
        "encode_s_per_image": {n: enc[n] / len(paths) for n in settings},
        "encode_ratio": {n: enc[n] / enc[0] for n in args.steps},
        "decode_ratio": {n: dec[n] / dec[0] for n in args.steps},
    }
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
