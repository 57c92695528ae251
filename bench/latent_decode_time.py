"""Time of the exact (integer) latent decoding against the float one, measured in one run.

Per 512² tile of the first images of a folder (quality 3, the shipped model): z, the
hyper-decoder, the range decoder (and, for the exact path, the symbol check). The float path
decodes the same strings with CompressAI's float ``h_s``; only its time is of interest here.

    python bench/latent_decode_time.py ../shared/data/kodak --images 8
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from oml import codec
from oml.imageio import IMAGE_SUFFIXES, decode_image
from oml.models.zoo import load_model


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("folder")
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--quality", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = load_model("oml-default", args.quality)
    files = sorted(p for p in Path(args.folder).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)[: args.images]
    exact = floating = 0.0
    tiles = 0
    for path in files:
        _, records = codec.read(codec.encode(model, decode_image(path.read_bytes()), quality=args.quality).data)
        for rec in records:
            start = time.perf_counter()
            model.decode_latent(rec.strings, rec.z_shape, args.quality)
            exact += time.perf_counter() - start
            start = time.perf_counter()
            model.decode_latent_float(rec.strings, rec.z_shape, args.quality)
            floating += time.perf_counter() - start
            tiles += 1
    print(f"{tiles} tiles: exact {1000 * exact / tiles:.1f} ms/tile, float {1000 * floating / tiles:.1f} ms/tile, ratio {exact / floating:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
