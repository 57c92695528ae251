"""Rate control on Kodak: how close --target-psnr / --target-bpp get, and what the search costs.

    python bench/ratecontrol.py                                   # about 6 minutes on 2 cores
    python bench/ratecontrol.py --psnr 27 29 --bpp 0.3 --images 4  # a quick look

For every image and target, :func:`oml.ratecontrol.encode_to_target` runs as ``oml compress``
does (shipped model, 512² tiles, no adaptation unless ``--steps``). What counts is measured on the
result: bpp from the file's bytes, PSNR of the decoder's output against the image. A target the
image cannot reach is counted as unreachable (the CLI's one-line error), not as a miss. Time is
relative to one plain coding of the same image at quality 3, measured in the same run.
Prints one table row per target; writes the per-image results as JSON with ``--json``. Exit
status 1 if any reachable target was missed by more than 0.1 dB or 3 %.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "kodak"), help="folder of images")
    parser.add_argument("--psnr", type=float, nargs="*", default=[26.0, 27.0, 28.0, 29.0, 30.0], help="PSNR targets, dB")
    parser.add_argument("--bpp", type=float, nargs="*", default=[0.25, 0.35, 0.5, 0.7, 0.9], help="bpp targets")
    parser.add_argument("--steps", type=int, default=0, help="online-adaptation steps inside the search")
    parser.add_argument("--images", type=int, help="only the first N images")
    parser.add_argument("--weights", help="oml weights file (default: the shipped model)")
    parser.add_argument("--json", help="write per-image results here")
    args = parser.parse_args(argv)

    import warnings

    warnings.simplefilter("ignore")
    from oml import codec, ratecontrol
    from oml.adapt import AdaptConfig
    from oml.imageio import decode_image
    from oml.models.zoo import load_model

    model = load_model("oml-default", 1, weights=args.weights)
    files = sorted(Path(args.data).glob("*.png"))[: args.images]
    cfg = AdaptConfig(steps=args.steps)
    targets = [ratecontrol.Target("psnr", v) for v in args.psnr] + [ratecontrol.Target("bpp", v) for v in args.bpp]
    rows: dict[tuple[str, float], list[dict]] = {(t.kind, t.value): [] for t in targets}
    plain_seconds = []
    for path in files:
        image = decode_image(path.read_bytes())
        start = time.perf_counter()
        codec.encode(model, image, quality=3, adapt_config=cfg)
        plain_seconds.append(time.perf_counter() - start)
        for t in targets:
            start = time.perf_counter()
            try:
                r = ratecontrol.encode_to_target(model, image, t, cfg)
            except ratecontrol.TargetOutOfRange:
                rows[(t.kind, t.value)].append({"image": path.name, "reachable": False})
                continue
            seconds = time.perf_counter() - start
            decoded = codec.decode(model, r.encoded.data)
            psnr = ratecontrol.image_psnr(decoded, image)
            bpp = 8 * len(r.encoded.data) / (image.shape[1] * image.shape[2])
            rows[(t.kind, t.value)].append(
                {"image": path.name, "reachable": True, "psnr": psnr, "bpp": bpp, "lmbda": r.lmbda, "codings": len(r.trials), "seconds": seconds}
            )
        print(f"{path.name} done", file=sys.stderr, flush=True)
    plain = statistics.mean(plain_seconds)
    print(f"\n{len(files)} images; one plain coding (quality 3): {plain:.2f} s per image\n")
    print("| target | reachable | within tolerance | worst error | mean error | codings (mean, max) | time vs one plain coding |")
    print("|---|---|---|---|---|---|---|")
    misses = 0
    for (kind, value), results in rows.items():
        ok = [r for r in results if r["reachable"]]
        if not ok:
            print(f"| {value:g} {'dB' if kind == 'psnr' else 'bpp'} | 0 of {len(results)} | – | – | – | – | – |")
            continue
        errors = [abs(r["psnr"] - value) if kind == "psnr" else abs(r["bpp"] - value) / value for r in ok]
        limit = 0.1 if kind == "psnr" else 0.03
        misses += sum(e > limit for e in errors)
        unit = (lambda e: f"{e:.3f} dB") if kind == "psnr" else (lambda e: f"{100 * e:.2f} %")
        print(
            f"| {value:g} {'dB' if kind == 'psnr' else 'bpp'} | {len(ok)} of {len(results)} | {sum(e <= limit for e in errors)} of {len(ok)} "
            f"| {unit(max(errors))} | {unit(statistics.mean(errors))} | {statistics.mean(r['codings'] for r in ok):.1f}, {max(r['codings'] for r in ok)} "
            f"| {statistics.mean(r['seconds'] for r in ok) / plain:.1f}× |"
        )
    if args.json:
        Path(args.json).write_text(json.dumps({f"{k}={v}": r for (k, v), r in rows.items()}, indent=1))
    return 1 if misses else 0


if __name__ == "__main__":
    raise SystemExit(main())
