"""The encoder effort levels side by side: images per second, encode and decode time relative to
`fast`, and BD-rate against `fast` and the classical anchors, measured in one run.

On a GPU (the default device when CUDA is there) this is the per-GPU throughput of each preset;
on a CPU, centre crops (--crop) keep the archival preset's refinement within minutes.

    python bench/effort.py ../shared/data/kodak --out results/effort                 # a CUDA machine: all of Kodak
    python bench/effort.py ../shared/data/kodak --limit 6 --crop 256 --out results/effort-cpu
    python bench/effort.py ../shared/data/kodak --limit 1 --crop 64 --refine 2 --anchors jpeg   # smoke run

Settings are interleaved per image and quality (fast, default, archival, then the next), so
machine noise hits them alike. Writes OUT/effort.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from oml import baselines, codec
from oml.effort import coding_effort
from oml.imageio import decode_image
from oml.metrics import bd_rate, psnr
from oml.models.zoo import load_model
from oml.names import EFFORTS, IMAGE_SUFFIXES, STRONGEST_ANCHORS


def _images(folder: Path, limit: int, crop: int, skip: int = 0) -> list[tuple[str, torch.Tensor]]:
    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)[skip:][: limit or None]
    out = []
    for path in paths:
        image = decode_image(path.read_bytes())
        if crop:
            h, w = image.shape[1:]
            top, left = max(0, (h - crop) // 2), max(0, (w - crop) // 2)
            image = image[:, top : top + crop, left : left + crop].contiguous()
        out.append((path.name, image))
    if not out:
        raise SystemExit(f"effort: no images in {folder}")
    return out


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("images", help="folder of images (e.g. ../shared/data/kodak)")
    parser.add_argument("--out", required=True, help="folder for effort.json")
    parser.add_argument("--limit", type=int, default=0, help="first N images only (after --skip)")
    parser.add_argument("--skip", type=int, default=0, help="leave out the first N images (to split a long run)")
    parser.add_argument("--crop", type=int, default=0, help="code the centre CROPxCROP of each image (0: whole images)")
    parser.add_argument("--quality", type=int, nargs="+", default=[1, 2, 3, 4, 5, 6])
    parser.add_argument("--effort", nargs="+", default=list(EFFORTS), choices=EFFORTS)
    parser.add_argument("--refine", type=int, help="override the refinement iterations of every effort that refines (smoke runs)")
    parser.add_argument("--anchors", nargs="*", default=list(STRONGEST_ANCHORS), help="classical anchors (skipped with a note when missing)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads for torch (0: torch's default)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    images = _images(Path(args.images), args.limit, args.crop, args.skip)
    model = load_model("oml-default", args.quality[0], all_qualities=True).to(device)
    settings = {}
    for name in args.effort:
        effort = coding_effort(name)
        refine = effort.refine.iterations if args.refine is None or not effort.refine.iterations else args.refine
        settings[name] = coding_effort(name, refine=refine)
    enc = {n: 0.0 for n in settings}
    dec = {n: 0.0 for n in settings}
    points = {n: {q: [] for q in args.quality} for n in settings}  # (bits, pixels, psnr) per image
    total = len(images) * len(args.quality) * len(settings)
    done, t_start = 0, time.perf_counter()
    for label, image in images:
        pixels = image.shape[1] * image.shape[2]
        for q in args.quality:
            for name, effort in settings.items():
                _sync(device)
                t0 = time.perf_counter()
                out = codec.encode(model, image, quality=q, adapt_config=effort.adapt, refine_config=effort.refine)
                _sync(device)
                t1 = time.perf_counter()
                restored = codec.decode(model, out.data)
                _sync(device)
                t2 = time.perf_counter()
                if not torch.equal(restored, out.reconstruction):
                    raise SystemExit(f"effort: {label} q{q} {name}: the decoder does not give the encoder's reconstruction")
                enc[name] += t1 - t0
                dec[name] += t2 - t1
                points[name][q].append((8 * len(out.data), pixels, float(psnr(out.reconstruction, image))))
                done += 1
                eta = (time.perf_counter() - t_start) / done * (total - done)
                print(f"[{done}/{total}] {label} q{q} {name}: {t1 - t0:.2f} s, ETA {eta / 60:.1f} min", file=sys.stderr, flush=True)

    def curve(per_quality: dict[int, list[tuple[int, int, float]]]) -> tuple[list[float], list[float]]:
        rates = [sum(b for b, _, _ in v) / sum(p for _, p, _ in v) for v in per_quality.values()]
        return rates, [sum(s for _, _, s in v) / len(v) for v in per_quality.values()]

    curves = {n: curve(points[n]) for n in settings}
    anchors, notes = {}, {}
    for codec_name in args.anchors:
        try:
            described = baselines.describe(codec_name)
        except baselines.CodecUnavailableError as exc:
            notes[codec_name] = str(exc)
            print(f"effort: note: anchor {codec_name} skipped: {exc}", file=sys.stderr)
            continue
        rows = [[baselines.evaluate(image, codec_name, q) for _, image in images] for q in baselines.DEFAULT_QUALITIES[codec_name]]
        anchors[codec_name] = ([sum(r.bpp for r in row) / len(row) for row in rows], [sum(r.psnr for r in row) / len(row) for row in rows], described)

    def bd(rate_a, dist_a, rate_b, dist_b) -> float | str:
        try:
            return round(bd_rate(rate_a, dist_a, rate_b, dist_b), 2)
        except ValueError as exc:
            return f"n/a: {exc}"

    first = next(iter(settings))
    seconds = len(images) * len(args.quality)
    result = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)",
        "images": len(images), "crop": args.crop or None, "qualities": args.quality, "refine_override": args.refine,
        "efforts": {
            n: {
                "refine": settings[n].refine.iterations, "adaptation": "quick" if settings[n].adapt.quick else settings[n].adapt.steps,
                "images_per_s": seconds / enc[n], "encode_s_per_image": enc[n] / seconds, "decode_s_per_image": dec[n] / seconds,
                "encode_vs_" + first: enc[n] / enc[first], "decode_vs_" + first: dec[n] / dec[first],
                "bpp": curves[n][0], "psnr": curves[n][1],
                "bd_rate_vs_" + first: bd(*curves[first], *curves[n]) if n != first else 0.0,
                "bd_rate_vs_anchor": {a: bd(r, d, *curves[n]) for a, (r, d, _) in anchors.items()},
            }
            for n in settings
        },
        "anchors": {a: {"bpp": r, "psnr": d, **described} for a, (r, d, described) in anchors.items()},
        "anchors_skipped": notes,
        "command": "python bench/effort.py " + " ".join(argv if argv is not None else sys.argv[1:]),
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "effort.json").write_text(json.dumps(result, indent=1))
    print(f"{'effort':10} {'img/s':>8} {'encode':>8} {'decode':>8} {'BD vs ' + first:>12} " + " ".join(f"{'vs ' + a:>10}" for a in anchors))
    for n, row in result["efforts"].items():
        cells = [row["bd_rate_vs_" + first], *row["bd_rate_vs_anchor"].values()]
        text = " ".join(f"{c:>+9.2f}%" if isinstance(c, float) else f"{'n/a':>10}" for c in cells)
        print(f"{n:10} {row['images_per_s']:8.3f} {row['encode_vs_' + first]:7.2f}x {row['decode_vs_' + first]:7.2f}x {text}")
    print(f"wrote {out / 'effort.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
