"""Latent refinement on Kodak: RD at every quality for a ladder of --refine N, alone and with
online adaptation, BD-rates against plain coding and against JPEG/WebP/AVIF, and the time it costs.

    python bench/refine.py --out docs/data/refine --images 4 --refine 0 25 100 400   # the refinement ladder (about an hour on 2 cores)
    python bench/refine.py --out /tmp/r --images 2 --refine 0 25  # a quick look
    python bench/refine.py --study --out docs/data/refine         # gain against iterations, up to 2000, on crops
    python bench/refine.py --decode-timing --out /tmp/r           # decode time: refined against plain file
    python bench/refine.py --surrogates --images 4 --quality 1 --out /tmp/r   # SGA, noise, STE at 50 iterations

Each (image, quality, N) is coded once, as `oml compress --refine N --steps S` does (shipped model,
512² tiles). The file stores one λ* set (the adapted one); the same file decoded with
``--metric plain`` is exactly what `--refine N` alone gives (the refined-or-not choice is made at
λ_t, before adaptation, and a plain file has the same size), so one coding measures both curves.
Bits are the file's bytes; PSNR is the decoder's 8-bit output against the image. Times are
measured in the same run: encode relative to N = 0 with the same S, decode of every file.
Results accumulate in OUT/points.json (a re-run skips what is there), the summary goes to
OUT/summary.json and OUT/rd.png.

``--study`` runs N = 0, 25, 100, 400, 1000, 2000 on 256² crops of the first images at q1 and q4
and reports the exact RD cost (λ_t·255²·MSE + bpp, on the real bytes) against N: how the gain
grows with the iterations a GPU would afford.
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

BASELINES = ("jpeg", "webp", "avif")


def _load(args):
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning)
    import torch

    from oml.imageio import decode_image
    from oml.models.zoo import load_model

    torch.set_num_threads(args.threads)
    paths = sorted(Path(args.data).glob("*.png"))[: args.images]
    images = [(p.name, decode_image(p.read_bytes())) for p in paths]
    return load_model("oml-default", 1, weights=args.weights, all_qualities=True), images


def _ladder(args, model, images, out: Path) -> list[dict]:
    import torch

    from oml import codec
    from oml.adapt import AdaptConfig
    from oml.metrics import ms_ssim, ms_ssim_db, psnr
    from oml.names import PLAIN
    from oml.refine import RefineConfig

    store = out / "points.json"
    points = json.loads(store.read_text()) if store.exists() else []
    done = {(p["image"], p["quality"], p["refine"], p["steps"], p.get("metric", "psnr")) for p in points}
    # image by image, so that a run stopped part-way still gives whole curves on the images it did
    for name, image in images:
        for q in args.quality:
            for n in args.refine:
                if (name, q, n, args.steps, args.metric) in done:
                    continue
                t0 = time.perf_counter()
                enc = codec.encode(model, image, quality=q, adapt_config=AdaptConfig(args.steps, (args.metric,)), refine_config=RefineConfig(n))
                t1 = time.perf_counter()
                adapted = codec.decode(model, enc.data)
                t2 = time.perf_counter()
                plain = codec.decode(model, enc.data, metric=PLAIN)
                assert torch.equal(adapted, enc.reconstruction)
                h, w = image.shape[1:]
                point = {
                    "image": name, "quality": q, "refine": n, "steps": args.steps, "metric": args.metric,
                    "bpp": 8 * len(enc.data) / (h * w),
                    "psnr_plain": float(psnr(plain, image)), "psnr_adapted": float(psnr(adapted, image)),
                    "msssim_plain": float(ms_ssim_db(ms_ssim(plain, image))), "msssim_adapted": float(ms_ssim_db(ms_ssim(adapted, image))),
                    "tiles": len(enc.tiles), "tiles_refined": sum(t.refined for t in enc.tiles),
                    "encode_s": t1 - t0, "decode_s": t2 - t1,
                }
                points.append(point)
                store.write_text(json.dumps(points, indent=1))
                print(f"q{q} N={n} {name}: {point['bpp']:.4f} bpp, {point['psnr_plain']:.2f} / {point['psnr_adapted']:.2f} dB, "
                      f"{point['tiles_refined']}/{point['tiles']} tiles refined, {point['encode_s']:.1f} s", flush=True)
    names = {name for name, _ in images}
    return [p for p in points if p["image"] in names and p["steps"] == args.steps and p["quality"] in args.quality and p["refine"] in args.refine
            and p.get("metric", "psnr") == args.metric]


def _baseline_curves(images, metric: str) -> dict[str, tuple[list[float], list[float]]]:
    from oml import baselines
    from oml.metrics import ms_ssim, ms_ssim_db, psnr

    curves = {}
    for name in BASELINES:
        rates, dists = [], []
        for q in baselines.DEFAULT_QUALITIES[name]:
            bpp, db = [], []
            for _, image in images:
                data = baselines.encode(image, name, q)
                bpp.append(8 * len(data) / (image.shape[1] * image.shape[2]))
                decoded = baselines.decode(data)
                db.append(float(psnr(decoded, image) if metric == "psnr" else ms_ssim_db(ms_ssim(decoded, image))))
            rates.append(statistics.mean(bpp))
            dists.append(statistics.mean(db))
        curves[name] = (rates, dists)
    return curves


def _summary(args, points: list[dict], images) -> dict:
    from oml.metrics import bd_rate

    curves: dict[str, tuple[list[float], list[float]]] = {}
    time_rows = []
    for n in args.refine:
        for kind in ("plain", "adapted"):
            label = f"R={n}" + (f" N={args.steps}" if kind == "adapted" else "")
            rows = [[p for p in points if p["refine"] == n and p["quality"] == q] for q in args.quality]
            if any(len(r) != len(images) for r in rows):
                continue
            key = f"{'psnr' if args.metric == 'psnr' else 'msssim'}_{kind}"
            curves[label] = ([statistics.mean(p["bpp"] for p in r) for r in rows], [statistics.mean(p[key] for p in r) for r in rows])
    anchors = _baseline_curves(images, args.metric)
    reference = f"R={args.refine[0]}"
    bd = {}
    for label, (rate, dist) in curves.items():
        for anchor, (a_rate, a_dist) in ({reference: curves[reference]} | anchors).items():
            if anchor != label:
                try:
                    bd[f"{label} vs {anchor}"] = round(bd_rate(a_rate, a_dist, rate, dist), 2)
                except ValueError as exc:
                    bd[f"{label} vs {anchor}"] = f"n/a: {exc}"
    base = {(p["image"], p["quality"]): p for p in points if p["refine"] == args.refine[0]}
    for n in args.refine:
        rel = [p["encode_s"] / base[p["image"], p["quality"]]["encode_s"] for p in points if p["refine"] == n]
        dec = [p["decode_s"] / base[p["image"], p["quality"]]["decode_s"] for p in points if p["refine"] == n]
        share = sum(p["tiles_refined"] for p in points if p["refine"] == n) / max(1, sum(p["tiles"] for p in points if p["refine"] == n))
        time_rows.append({"refine": n, "encode_s": statistics.mean(p["encode_s"] for p in points if p["refine"] == n),
                          "encode_vs_plain": statistics.mean(rel), "decode_vs_plain": statistics.mean(dec), "tiles_refined": share})
    return {"images": [name for name, _ in images], "qualities": args.quality, "steps": args.steps, "metric": args.metric,
            "curves": {k: {"bpp": v[0], "psnr": v[1]} for k, v in (curves | anchors).items()}, "bd_rate_percent": bd, "time": time_rows}


def _plot(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 5))
    for label, c in summary["curves"].items():
        style = "--" if label in BASELINES else "-o"
        ax.plot(c["bpp"], c["psnr"], style, label=label, markersize=3)
    ax.set_xlabel("bits per pixel")
    ax.set_ylabel("PSNR (dB)" if summary.get("metric", "psnr") == "psnr" else "MS-SSIM (dB)")
    ax.set_xlim(0, max(max(c["bpp"]) for k, c in summary["curves"].items() if k not in BASELINES) * 1.15)
    ax.set_ylim(bottom=min(min(c["psnr"]) for k, c in summary["curves"].items() if k not in BASELINES) - 1.5)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(f"latent refinement on Kodak ({len(summary['images'])} images)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _study(model, images, out: Path) -> None:
    import torch

    from oml import codec
    from oml.refine import RefineConfig, rd_cost

    results = []
    for q in (1, 4):
        lmbda = model.lambdas[q]
        for name, image in images[:4]:
            crop = image[:, 128:384, 256:512].contiguous()
            row = {"image": name, "quality": q, "cost": {}, "seconds": {}}
            for n in (0, 25, 100, 400, 1000, 2000):
                t0 = time.perf_counter()
                enc = codec.encode(model, crop, quality=q, tile_size=256, refine_config=RefineConfig(n))
                row["seconds"][n] = time.perf_counter() - t0
                bits = torch.tensor([8.0 * len(enc.data)])
                recon = enc.reconstruction.float().div(255).unsqueeze(0)
                row["cost"][n] = float(rd_cost("psnr", torch.tensor([255.0**2]), lmbda, recon, crop.float().div(255).unsqueeze(0), bits))
                print(f"q{q} {name} N={n}: cost {row['cost'][n]:.4f} ({100 * (row['cost'][n] / row['cost'][0] - 1):+.2f} %), {row['seconds'][n]:.1f} s", flush=True)
            results.append(row)
            (out / "study.json").write_text(json.dumps(results, indent=1))
    for q in (1, 4):
        rows = [r for r in results if r["quality"] == q]
        gains = {n: statistics.mean(100 * (r["cost"][n] / r["cost"][0] - 1) for r in rows) for n in rows[0]["cost"]}
        print(f"q{q}: " + ", ".join(f"N={n} {g:+.2f} %" for n, g in gains.items()))


def _surrogates(args, model, images) -> None:
    """The rounding surrogates against each other: total exact RD cost of 256² crops of the first
    images (bits of the files, 8-bit output), refined with each surrogate, against no refinement.
    A surrogate whose search finds nothing better leaves the tiles as they were (0 %)."""
    import torch

    from oml import codec
    from oml.refine import SURROGATES, RefineConfig, rd_cost

    crops = [image[:, 128:384, 256:512].contiguous() for _, image in images]
    for q in args.quality:
        lmbda = model.lambdas[q]

        def total(cfg: RefineConfig) -> float:
            cost = 0.0
            for crop in crops:
                enc = codec.encode(model, crop, quality=q, tile_size=256, refine_config=cfg)
                x_hat, x = enc.reconstruction.float().div(255).unsqueeze(0), crop.float().div(255).unsqueeze(0)
                cost += float(rd_cost("psnr", torch.tensor([255.0**2]), lmbda, x_hat, x, torch.tensor([8.0 * len(enc.data)])))
            return cost

        t0 = time.perf_counter()
        plain = total(RefineConfig(0))
        t_plain = time.perf_counter() - t0
        for surrogate in args.surrogate or SURROGATES:
            cfg = RefineConfig(args.iterations, surrogate, lr=args.lr, tau_start=args.tau_start)
            t0 = time.perf_counter()
            change = 100 * (total(cfg) / plain - 1)
            per = (time.perf_counter() - t0 - t_plain) / (args.iterations * len(crops) / 4)  # 4 crops of 256² = one 512² tile
            print(f"q{q} {surrogate} N={args.iterations} lr={args.lr} tau0={args.tau_start}: RD cost {change:+.2f} %, "
                  f"{per:.3f} s per iteration per 512² of pixels", flush=True)


def _decode_timing(model, images) -> None:
    """Decode time of a refined file against a plain one of the same image, interleaved (the
    ladder's decode times are taken while encodes of other lengths ran on the same cores)."""
    from oml import codec
    from oml.refine import RefineConfig

    name, image = images[0]
    files = {n: codec.encode(model, image, quality=3, refine_config=RefineConfig(n)).data for n in (0, 25)}
    times: dict[int, list[float]] = {0: [], 25: []}
    for _ in range(7):
        for n, data in files.items():
            t0 = time.perf_counter()
            codec.decode(model, data)
            times[n].append(time.perf_counter() - t0)
    plain, refined = statistics.median(times[0]), statistics.median(times[25])
    print(f"{name} q3 decode: plain {plain:.3f} s, refined (N=25) {refined:.3f} s, ratio {refined / plain:.2f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "kodak"), help="folder of PNG images")
    parser.add_argument("--out", required=True, help="folder for points.json, summary.json and rd.png")
    parser.add_argument("--images", type=int, default=8, help="the first N images (default 8)")
    parser.add_argument("--quality", type=int, nargs="+", default=[1, 2, 3, 4])
    parser.add_argument("--refine", type=int, nargs="+", default=[0, 100, 400], help="refinement iterations; the first is the reference")
    parser.add_argument("--steps", type=int, default=5, help="online-adaptation steps of the adapted curves (default 5)")
    parser.add_argument("--metric", choices=("psnr", "ms-ssim"), default="psnr",
                        help="what refinement and adaptation lower, and the quality axis of the curves (default psnr)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--weights", help="oml weights file (default: the shipped model)")
    parser.add_argument("--study", action="store_true", help="gain against iterations on crops instead")
    parser.add_argument("--decode-timing", action="store_true", help="only time decoding a refined against a plain file")
    parser.add_argument("--surrogates", action="store_true", help="compare the rounding surrogates on 256² crops instead")
    parser.add_argument("--surrogate", nargs="+", choices=("sga", "ste", "noise"), help="--surrogates: only these (default all)")
    parser.add_argument("--iterations", type=int, default=50, help="--surrogates: refinement iterations (default 50)")
    parser.add_argument("--lr", type=float, default=0.02, help="--surrogates: Adam's learning rate (default 0.02)")
    parser.add_argument("--tau-start", type=float, default=1.0, help="--surrogates: first SGA temperature (default 1.0)")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model, images = _load(args)
    if args.study:
        _study(model, images, out)
        return 0
    if args.decode_timing:
        _decode_timing(model, images)
        return 0
    if args.surrogates:
        _surrogates(args, model, images)
        return 0
    points = _ladder(args, model, images, out)
    summary = _summary(args, points, images)
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    _plot(summary, out / "rd.png")
    for label, c in summary["curves"].items():
        print(f"{label}: " + ", ".join(f"{b:.3f}/{d:.2f}" for b, d in zip(c["bpp"], c["psnr"])))
    for key, value in summary["bd_rate_percent"].items():
        print(f"BD-rate {key}: {value if isinstance(value, str) else f'{value:+.2f} %'}")
    for row in summary["time"]:
        print(f"R={row['refine']}: encode {row['encode_s']:.1f} s ({row['encode_vs_plain']:.1f}x plain), decode {row['decode_vs_plain']:.2f}x, "
              f"{100 * row['tiles_refined']:.0f} % of tiles refined")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
