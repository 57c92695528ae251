r"""Encode on a GPU, decode on a CPU: do files coded with CUDA transforms restore elsewhere?

Two halves, run on two machines:

    python bench/cuda_roundtrip.py encode IMAGES... -o OUT_DIR --device cuda   # on the GPU machine
    python bench/cuda_roundtrip.py decode OUT_DIR                              # here, on the CPU

``encode`` codes each image at qualities 1 and 6 with online adaptation (5 steps) on the given
device, and writes the ``.oml`` files, the encoder's own reconstructions (PNG) and a JSON of what
the encoder measured (bytes, PSNR, seconds). ``decode`` restores every file with the CPU codec
and compares the pixels with the encoder's reconstruction: grey levels off, PSNR on both sides.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from oml import codec
from oml.adapt import AdaptConfig
from oml.imageio import decode_image
from oml.metrics import psnr
from oml.models.zoo import load_decoder, load_model

QUALITIES = (1, 6)


def _encode(args: argparse.Namespace) -> int:
    device = torch.device(args.device)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    models = {q: load_model("oml-default", q).to(device) for q in QUALITIES}
    for path in args.images:
        image = decode_image(Path(path).read_bytes())
        for q, model in models.items():
            t0 = time.perf_counter()
            enc = codec.encode(model, image, quality=q, adapt_config=AdaptConfig(steps=args.steps))
            seconds = time.perf_counter() - t0
            stem = f"{Path(path).stem}-q{q}"
            (out / f"{stem}.oml").write_bytes(enc.data)
            Image.fromarray(enc.reconstruction.permute(1, 2, 0).cpu().numpy()).save(out / f"{stem}.png")
            rows.append({"file": stem, "bytes": len(enc.data), "psnr": float(psnr(enc.reconstruction.cpu(), image)), "seconds": round(seconds, 3), "source": str(path)})
            print(json.dumps(rows[-1]), flush=True)
    info = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu", "torch": torch.__version__, "steps": args.steps, "rows": rows}
    (out / "encoded.json").write_text(json.dumps(info, indent=1))
    return 0


def _decode(args: argparse.Namespace) -> int:
    folder = Path(args.folder)
    info = json.loads((folder / "encoded.json").read_text())
    print(f"encoded on {info['device']} (torch {info['torch']}), decoded here on the CPU (torch {torch.__version__})")
    worst, models = 0, {}
    for row in info["rows"]:
        data = (folder / f"{row['file']}.oml").read_bytes()
        header = codec.read_header(data)
        key = (header.model, header.quality, header.fingerprint, header.version)
        if key not in models:  # the packaged weights version that coded the file, as `oml decompress` finds it
            models[key] = load_decoder(*key)
        restored = codec.decode(models[key], data)
        theirs = torch.from_numpy(np.asarray(Image.open(folder / f"{row['file']}.png").convert("RGB"))).permute(2, 0, 1)
        source = decode_image(Path(row["source"]).read_bytes()) if Path(row["source"]).is_file() else None
        off = (restored.int() - theirs.int()).abs()
        worst = max(worst, int(off.max()))
        mine = f"{float(psnr(restored, source)):.3f}" if source is not None else "n/a"
        print(f"{row['file']}: {row['bytes']} B, encoder PSNR {row['psnr']:.3f} dB, CPU restore {mine} dB, "
              f"{int((off > 0).sum())} of {off.numel()} values differ (max {int(off.max())} levels)")
    return 0 if worst <= 1 else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="verb", required=True)
    enc = sub.add_parser("encode", help="code images on a device")
    enc.add_argument("images", nargs="+")
    enc.add_argument("-o", "--out", required=True)
    enc.add_argument("--device", default="cuda")
    enc.add_argument("--steps", type=int, default=5)
    dec = sub.add_parser("decode", help="restore the coded files here and compare")
    dec.add_argument("folder")
    args = parser.parse_args(argv)
    return _encode(args) if args.verb == "encode" else _decode(args)


if __name__ == "__main__":
    sys.exit(main())
