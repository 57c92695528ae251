r"""Encode and decode time of the shipped model with its transforms in channels-last memory against
contiguous (NCHW) memory, measured in one run, alternating, on the same images; and whether the two
give the same bytes and the same pixels.

    python bench/channels_last.py ../shared/data/kodak --limit 4 --quality 3     # ~1 min on 2 cores

``oml.models.zoo.load_model`` puts ``g_a`` and the synthesis in channels-last memory
(``use_channels_last``) (oneDNN's
preferred layout for convolutions on a CPU; also what cuDNN prefers under autocast). The values
are the same computation in another order, so a file's bytes may differ only where a value of y
sits on a rounding boundary, and the decoder's pixels by a grey level at most, as on any other
machine (docs/DESIGN.md, "Portable decoding").
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

from oml import codec
from oml.imageio import IMAGE_SUFFIXES, decode_image
from oml.models.zoo import load_model, use_channels_last


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", help="folder of images")
    parser.add_argument("--limit", type=int, default=4, help="images (default: %(default)s)")
    parser.add_argument("--quality", type=int, default=3, help="quality (default: %(default)s)")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds (default: %(default)s)")
    args = parser.parse_args(argv)
    paths = sorted(p for p in Path(args.folder).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)[: args.limit]
    if not paths:
        print(f"channels_last: no images in {args.folder}", file=sys.stderr)
        return 2
    images = [decode_image(p.read_bytes()) for p in paths]
    model = load_model("oml-default", args.quality)
    layouts = {"contiguous": torch.contiguous_format, "channels_last": torch.channels_last}
    times = {name: {"encode": [], "decode": []} for name in layouts}
    coded = {}
    for _ in range(args.rounds):
        for name, fmt in layouts.items():
            use_channels_last(model, fmt)
            for i, image in enumerate(images):
                t0 = time.perf_counter()
                enc = codec.encode(model, image, quality=args.quality)
                t1 = time.perf_counter()
                restored = codec.decode(model, enc.data)
                t2 = time.perf_counter()
                times[name]["encode"].append(t1 - t0)
                times[name]["decode"].append(t2 - t1)
                coded[name, i] = (enc.data, restored)
    for name in layouts:
        enc, dec = (statistics.median(times[name][k]) for k in ("encode", "decode"))
        print(f"{name:14s} encode {enc:.3f} s/img  decode {dec:.3f} s/img")
    ratio = {k: statistics.median(times["contiguous"][k]) / statistics.median(times["channels_last"][k]) for k in ("encode", "decode")}
    print(f"channels_last speed-up: encode {ratio['encode']:.2f}x, decode {ratio['decode']:.2f}x")
    same_bytes = sum(coded["contiguous", i][0] == coded["channels_last", i][0] for i in range(len(images)))
    off = max(int((coded["contiguous", i][1].int() - coded["channels_last", i][1].int()).abs().max()) for i in range(len(images)))
    print(f"same bytes: {same_bytes} of {len(images)} images; largest pixel difference {off} grey levels")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
