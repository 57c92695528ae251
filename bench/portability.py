"""Do archives restore on other machines, and what does the exact entropy path cost?

Codes every image of a folder at every quality with the default model's weights given (``--weights``)
twice: format 2 (exact entropy parameters, symbol checks) and format 1 (CompressAI's float ``h_s``, float
CDF indexes and means, no symbol check; what this project wrote before). Then decodes every
file in subprocesses that compute floats differently (bench/elsewhere.py): the same machine,
other CPU kernels with one thread, TF32 convolutions, float64 convolutions. Per environment
and format: files restored within one grey level of the encoder's reconstruction, files
restored wrong without a word, desyncs detected, pixels that differ.

The cost: the BD-rate of format 2 against format 1 over the mean (bpp, PSNR) per quality.
Format 1 predates the checkerboard context, so the weights default to v2, the last release without
one (``weights/oml-default-v2.pt`` in a checkout). A format-2 file that cannot be decoded at all, or
a format-1 file on the same machine, stops the bench with its reason.

    python bench/portability.py ../shared/data/kodak -o docs/data/portability     # ~8 min on 2 cores
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
from oml import codec, tiling
from oml.imageio import IMAGE_SUFFIXES, decode_image
from oml.metrics import bd_rate, psnr
from oml.models.zoo import load_model

OTHER_KERNELS = {"ATEN_CPU_CAPABILITY": "default", "DNNL_MAX_CPU_ISA": "SSE41", "OMP_NUM_THREADS": "1"}
ENVIRONMENTS = {
    "same machine": ({}, ()),
    "other CPU kernels, 1 thread": (OTHER_KERNELS, ()),
    "TF32 convolutions": ({}, ("--perturb", "tf32")),
    "float64 convolutions": ({}, ("--perturb", "float64")),
}


@torch.no_grad()
def format1_encode(model, image: torch.Tensor, quality: int) -> tuple[bytes, torch.Tensor]:
    """The format-1 coder (CompressAI's float ``h_s``, float CDF indexes and means, no symbol
    check) on one image: its byte string and its reconstruction."""
    lmbda = float(np.float32(model.lambdas[quality]))
    m = model.encoders["0"]
    gc = m.gaussian_conditional
    grid = tiling.tile_grid(*image.shape[1:])
    lam = codec.plain_lambdas(model.num_lambdas, lmbda)
    records, recon = [], torch.empty_like(image)
    for tile, pixels in zip(grid, tiling.split(image, grid)):
        y = model.analyze(tiling.pad(pixels.float().div(255).unsqueeze(0)), quality, lmbda)
        z = m.h_a(y)
        z_strings = m.entropy_bottleneck.compress(z)
        scales, means = m.h_s(m.entropy_bottleneck.decompress(z_strings, z.shape[-2:])).chunk(2, 1)
        y_strings = gc.compress(y, gc.build_indexes(scales), means=means)
        records.append(codec.TileRecord(tuple(z.shape[-2:]), [y_strings[0], z_strings[0]], lam.view(1, -1)))
        y_hat = gc.quantize(y, "dequantize", means)
        tiling.split(recon, [tile])[0].copy_(codec.reconstruct_tile(model, y_hat, lam, lmbda, tile))
    header = codec.Header(1, model.name, model.fingerprint(quality, 1), quality, lmbda, image.shape[1], image.shape[2],
                          tiling.TILE, model.num_lambdas, (codec.PLAIN,), len(grid))
    return codec.write(header, records), recon


def encode_all(files: list[Path], qualities: list[int], out: Path, weights: Path) -> tuple[list[dict], list[dict]]:
    jobs, costs = [], []
    models = {q: load_model("oml-default", q, weights=weights) for q in qualities}
    for path in files:
        image = decode_image(path.read_bytes())
        pixels = image.shape[1] * image.shape[2]
        for q in qualities:
            old, old_recon = format1_encode(models[q], image, q)
            new = codec.encode(models[q], image, quality=q)
            for fmt, data, recon in (("f1", old, old_recon), ("f2", new.data, new.reconstruction)):
                name = f"{path.stem}-q{q}-{fmt}"
                (out / f"{name}.oml").write_bytes(data)
                np.save(out / f"{name}-encoder.npy", recon.numpy())
                jobs.append({"model": "oml-default", "quality": q, "weights": str(weights), "input": str(out / f"{name}.oml"), "output": ""})
            costs.append({
                "image": path.name, "quality": q, "bpp": 8 * len(new.data) / pixels, "psnr": float(psnr(new.reconstruction, image)),
                "format1_bpp": 8 * len(old) / pixels, "format1_psnr": float(psnr(old_recon, image)),
            })
        print(f"coded {path.name}", flush=True)
    return jobs, costs


def decode_everywhere(jobs: list[dict], out: Path) -> dict:
    """Per environment and format: files restored within one level, restored wrong (silently),
    desyncs detected, and how many pixels differ from the encoder's reconstruction."""
    results, errors = {}, []
    for label, (env, args) in ENVIRONMENTS.items():
        tag = "".join(c if c.isalnum() else "-" for c in label)
        listed = [dict(j, output=j["input"].replace(".oml", f"-{tag}.npy")) for j in jobs]
        spec = out / f"jobs-{tag}.json"
        spec.write_text(json.dumps(listed))
        run = subprocess.run([sys.executable, str(ROOT / "bench" / "elsewhere.py"), str(spec), *args],
                             env={**os.environ, **env}, capture_output=True, text=True, check=True)
        status = {json.loads(line)["input"]: json.loads(line) for line in run.stdout.splitlines()}
        for fmt in ("f1", "f2"):
            counts = {"files": 0, "within_1_level": 0, "wrong": 0, "desync": 0, "error": 0, "max_level": 0, "pixels_differing": 0, "pixels": 0}
            for job in (j for j in listed if j["input"].endswith(f"-{fmt}.oml")):
                counts["files"] += 1
                state = status[job["input"]]["status"]
                if state != "ok":
                    counts[state] += 1
                    if state == "error" and (fmt == "f2" or label == "same machine"):  # format 1 elsewhere may fail so
                        errors.append(f"{label}: {Path(job['input']).name}: {status[job['input']]['reason']}")
                    continue
                a = np.load(job["output"]).astype(int)
                b = np.load(job["input"].replace(".oml", "-encoder.npy")).astype(int)
                level = int(np.abs(a - b).max())
                counts["within_1_level" if level <= 1 else "wrong"] += 1
                counts["max_level"] = max(counts["max_level"], level)
                counts["pixels_differing"] += int((a != b).sum())
                counts["pixels"] += a.size
                os.remove(job["output"])
            results[f"format {fmt[1]}, {label}"] = counts
            print(f"format {fmt[1]}, {label}: {counts}", flush=True)
    if errors:
        raise SystemExit(f"bench/portability.py: {len(errors)} files could not be decoded at all, e.g. {errors[0]}")
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("folder")
    parser.add_argument("-o", "--output", required=True)
    parser.add_argument("--qualities", type=int, nargs="+", default=[1, 2, 3, 4])
    parser.add_argument("--limit", type=int, default=0)
    parser.add_argument("--weights", type=Path, default=ROOT / "weights" / "oml-default-v2.pt",
                        help="oml-default weights without a checkerboard context, which format 1 cannot code (default: v2's)")
    args = parser.parse_args(argv)
    if not args.weights.is_file():
        raise SystemExit(f"bench/portability.py: no weights file {args.weights}")
    files = sorted(p for p in Path(args.folder).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)[: args.limit or None]
    out = Path(args.output)
    work = out / "work"
    work.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(2)
    jobs, costs = encode_all(files, args.qualities, work, args.weights)
    environments = decode_everywhere(jobs, work)
    curve = {key: [float(np.mean([c[key] for c in costs if c["quality"] == q])) for q in args.qualities]
             for key in ("bpp", "psnr", "format1_bpp", "format1_psnr")}
    cost = bd_rate(curve["format1_bpp"], curve["format1_psnr"], curve["bpp"], curve["psnr"]) if len(args.qualities) >= 4 else math.nan
    summary = {"images": len(files), "qualities": args.qualities, "weights": args.weights.name, "environments": environments, "curves": curve,
               "bd_rate_format2_vs_format1_percent": None if math.isnan(cost) else round(cost, 3), "per_image": costs}
    (out / "portability.json").write_text(json.dumps(summary, indent=1))
    for f in work.iterdir():
        f.unlink()
    work.rmdir()
    print(f"BD-rate of format 2 against format 1: {cost:+.3f} %" if not math.isnan(cost) else "BD-rate needs 4 qualities or more")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
