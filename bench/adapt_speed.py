"""Encode and decode time with online adaptation, as ratios to no adaptation, measured in one run.

For each image and quality the encoder runs with no adaptation, quick adaptation (``--quick``)
and every N of --steps (the paper's search), interleaved so machine noise hits all settings
alike; the decoder runs on each result. Also prints each setting's mean PSNR gain.

    python bench/adapt_speed.py --images 6 --quality 1 3 6 --quick --steps      # quick only
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
from oml.metrics import psnr
from oml.models.zoo import load_model

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kodak", default=str(ROOT.parent / "shared" / "data" / "kodak"))
    parser.add_argument("--weights", default=None)
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--quality", type=int, nargs="+", default=[1])
    parser.add_argument("--steps", type=int, nargs="*", default=[5, 20, 99], help="paper-search iterations, one setting each")
    parser.add_argument("--quick", action="store_true", help="also time quick adaptation")
    parser.add_argument("--metric", default="psnr", choices=["psnr", "ms-ssim"])
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = load_model("oml-default", weights=args.weights)
    configs = {"0": AdaptConfig()}
    if args.quick:
        configs["quick"] = AdaptConfig(quick=True, metrics=(args.metric,))
    configs.update({str(n): AdaptConfig(steps=n, metrics=(args.metric,)) for n in args.steps})
    enc = dict.fromkeys(configs, 0.0)
    dec = dict.fromkeys(configs, 0.0)
    gain = dict.fromkeys(configs, 0.0)
    paths = sorted(Path(args.kodak).glob("*.png"))[: args.images]
    for path in paths:
        image = decode_image(path.read_bytes())
        for q in args.quality:
            base = None
            for name, cfg in configs.items():
                t0 = time.perf_counter()
                out = codec.encode(model, image, quality=q, adapt_config=cfg)
                t1 = time.perf_counter()
                codec.decode(model, out.data)
                t2 = time.perf_counter()
                enc[name] += t1 - t0
                dec[name] += t2 - t1
                score = float(psnr(out.reconstruction, image))
                base = score if base is None else base
                gain[name] += score - base
        print(f"{path.name}: " + ", ".join(f"{n} {enc[n]:.1f}s" for n in configs), flush=True)
    runs = len(paths) * len(args.quality)
    result = {
        "images": len(paths), "qualities": args.quality, "metric": args.metric, "threads": args.threads,
        "encode_s_per_image": {n: enc[n] / runs for n in configs},
        "encode_ratio": {n: enc[n] / enc["0"] for n in configs if n != "0"},
        "decode_ratio": {n: dec[n] / dec["0"] for n in configs if n != "0"},
        "psnr_gain_db": {n: gain[n] / runs for n in configs if n != "0"},
    }
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
