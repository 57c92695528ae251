"""Online adaptation on Kodak: gains, share of tiles improved, gain against time, change maps.

One adaptation run of max(--record) iterations per tile gives every shorter run
too (the search is deterministic, see ``AdaptResult.history``). Writes
``<out>/adapt_<metric>.json`` and the figures ``gain_time_<metric>.png`` (paper
Fig. 5) and ``change_maps_<metric>.png`` (paper Figs. 6–7). With ``--quick`` each
tile gets quick adaptation instead (:mod:`oml.quick`; one column, ``quick``), scored
as the encoder keeps it (only if the decoder's 8-bit output improves).

    python bench/adapt_study.py --out docs/data --record 5 20 99 --qualities 1 2 3 4
    python bench/adapt_study.py --out /tmp/quick --quick --qualities 1 2 3 4 5 6
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import sys
import time
from pathlib import Path

import torch

from oml import codec, tiling
from oml.adapt import adapt, distortion, to_pixels
from oml.quick import adapt_quick
from oml.imageio import decode_image
from oml.metrics import bd_rate
from oml.models.zoo import load_model

ROOT = Path(__file__).resolve().parents[1]

_MODEL = None


def _init(weights: str | None) -> None:
    global _MODEL
    torch.set_num_threads(1)
    _MODEL = load_model("oml-default", weights=weights)


def _score_db(metric: str, d: float) -> float:
    return -10 * math.log10(max(d, 1e-12))  # PSNR for MSE on [0,1]; MS-SSIM dB for 1 - MS-SSIM


def _quick(model, code, x: torch.Tensor, lmbda: float, metric: str) -> dict:
    """One tile's quick adaptation, as the encoder keeps it: distortion before and after, seconds."""
    coded = torch.tensor([lmbda])
    lam = codec.plain_lambdas(model.num_lambdas, lmbda).float()[None]
    with torch.no_grad():
        kept, plain = model.synthesis.block_outputs(model.synthesis.prefix(code.y_hat, coded), lam, coded)
        before = float(distortion(metric, to_pixels(plain[..., : x.shape[-2], : x.shape[-1]]), x)[0])
    t0 = time.perf_counter()
    res = adapt_quick(model.synthesis, kept, x, lmbda, metric)
    seconds = time.perf_counter() - t0
    with torch.no_grad():
        after = float(distortion(metric, to_pixels(res.output[..., : x.shape[-2], : x.shape[-1]]), x)[0])
    if not after < before:
        after, res = before, res._replace(lambdas=lam[0])
    return {"distortion": [before, after], "seconds": [0.0, seconds], "lambdas": [lam[0].tolist(), res.lambdas.float().tolist()]}


def _task(args: tuple[str, int, int, str]) -> dict:
    path, quality, steps, metric = args
    model = _MODEL
    image = decode_image(Path(path).read_bytes())
    height, width = image.shape[1:]
    t0 = time.perf_counter()
    plain = codec.encode(model, image, quality=quality)
    encode_s = time.perf_counter() - t0
    lmbda = codec.read_header(plain.data).lmbda
    grid = tiling.tile_grid(height, width)
    tiles = []
    for tile, pixels in zip(grid, tiling.split(image, grid)):
        x = pixels.float().div(255).unsqueeze(0)
        code = model.encode_latent(tiling.pad(x), quality, lmbda)
        if steps == 0:  # quick adaptation
            tiles.append({"tile": tile._asdict(), **_quick(model, code, x, lmbda, metric)})
            continue
        with torch.no_grad():
            h = model.synthesis.prefix(code.y_hat, torch.tensor([lmbda]))
        res = adapt(model.synthesis, h, x, lmbda, steps, metric)
        tiles.append({
            "tile": tile._asdict(),
            "distortion": res.history[:, 0].tolist(),
            "seconds": res.seconds.tolist(),
            "lambdas": res.lambda_history[:, 0].float().tolist(),
        })
    return {"image": Path(path).name, "quality": quality, "lambda_t": lmbda, "bytes": len(plain.data),
            "pixels": height * width, "encode_s": encode_s, "tiles": tiles}


def _image_score(rec: dict, n: int, metric: str) -> float:
    """Image-level dB after n iterations: pixel-weighted mean distortion over tiles (exact for MSE)."""
    total = sum(t["tile"]["height"] * t["tile"]["width"] * t["distortion"][n] for t in rec["tiles"])
    return _score_db(metric, total / rec["pixels"])


def summarize(records: list[dict], record: list[int], metric: str, labels: dict[int, str] | None = None) -> dict:
    """Per quality and N: mean gain, share of tiles improved, time; BD-rate of each N against none.
    ``labels`` names the columns (default ``N=<n>``)."""
    labels = labels or {n: f"N={n}" for n in record}
    qualities = sorted({r["quality"] for r in records})
    out = {"metric": metric, "images": len({r["image"] for r in records}), "by_quality": {}, "bd_rate_percent": {}}
    for q in qualities:
        rs = [r for r in records if r["quality"] == q]
        row = {"bpp": sum(8 * r["bytes"] / r["pixels"] for r in rs) / len(rs), "db_at_0": sum(_image_score(r, 0, metric) for r in rs) / len(rs)}
        for n in record:
            gains = [_image_score(r, n, metric) - _image_score(r, 0, metric) for r in rs]
            tiles = [t for r in rs for t in r["tiles"]]
            improved = sum(t["distortion"][n] < t["distortion"][0] for t in tiles)
            adapt_s = sum(sum(t["seconds"][n] for t in r["tiles"]) for r in rs)
            enc_s = sum(r["encode_s"] for r in rs)
            row[labels[n]] = {
                "mean_gain_db": sum(gains) / len(gains),
                "min_image_gain_db": min(gains),
                "tiles_improved": improved / len(tiles),
                "tiles_worse": sum(t["distortion"][n] > t["distortion"][0] for t in tiles),
                "adapt_over_encode_time": adapt_s / enc_s,
            }
        out["by_quality"][q] = row
    rates = [out["by_quality"][q]["bpp"] for q in qualities]
    base = [out["by_quality"][q]["db_at_0"] for q in qualities]
    if len(qualities) >= 4:
        for n in record:
            adapted = [out["by_quality"][q]["db_at_0"] + out["by_quality"][q][labels[n]]["mean_gain_db"] for q in qualities]
            # λ* costs no extra bytes over the plain file (the set name is 1 byte shorter): same rates.
            try:
                out["bd_rate_percent"][labels[n]] = bd_rate(rates, base, rates, adapted)
            except ValueError as exc:
                out["bd_rate_percent"][labels[n]] = f"n/a: {exc}"
    return out


def plot_gain_time(records: list[dict], metric: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for q in sorted({r["quality"] for r in records}):
        rs = [r for r in records if r["quality"] == q]
        steps = len(rs[0]["tiles"][0]["distortion"])
        enc = sum(r["encode_s"] for r in rs)
        xs = [100 * sum(sum(t["seconds"][n] for t in r["tiles"]) for r in rs) / enc for n in range(steps)]
        ys = [sum(_image_score(r, n, metric) - _image_score(r, 0, metric) for r in rs) / len(rs) for n in range(steps)]
        ax.plot(xs, ys, "-", label=f"q{q} (λ={rs[0]['lambda_t']:.4f})")
    ax.set_xscale("symlog", linthresh=10)
    ax.set_xlabel("extra encoding time (% of encoding without adaptation)")
    ax.set_ylabel(f"mean gain ({'PSNR' if metric == 'psnr' else 'MS-SSIM'} dB)")
    ax.set_title("Online adaptation: gain against time (Kodak)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_change_maps(records: list[dict], kodak: Path, weights: str | None, metric: str, path: Path) -> None:
    """Tiles of most and least gain: original, |error| at λ_t, and where λ* lowered the error."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    model = load_model("oml-default", weights=weights)
    def gain(pair: tuple[dict, dict]) -> float:
        return _score_db(metric, pair[1]["distortion"][-1]) - _score_db(metric, pair[1]["distortion"][0])

    flat = [(r, t) for r in records for t in r["tiles"] if t["tile"]["height"] == t["tile"]["width"] == 512]
    flat.sort(key=gain)
    picks = [("most gain", flat[-1]), ("least gain", flat[0])]
    fig, axes = plt.subplots(2, 3, figsize=(12, 8))
    for row, (label, (rec, t)) in enumerate(picks):
        image = decode_image((kodak / rec["image"]).read_bytes())
        tile = tiling.Tile(**t["tile"])
        pixels = tiling.split(image, [tile])[0]
        x = pixels.float().div(255).unsqueeze(0)
        code = model.encode_latent(tiling.pad(x), rec["quality"], rec["lambda_t"])
        lam_t = codec.plain_lambdas(model.num_lambdas, rec["lambda_t"])
        lam_star = torch.tensor(t["lambdas"][-1]).half()
        before = codec.reconstruct_tile(model, code.y_hat, lam_t, rec["lambda_t"], tile).float()
        after = codec.reconstruct_tile(model, code.y_hat, lam_star, rec["lambda_t"], tile).float()
        err_before = (before - pixels.float()).abs().mean(0)
        change = err_before - (after - pixels.float()).abs().mean(0)
        axes[row, 0].imshow(pixels.permute(1, 2, 0).numpy())
        axes[row, 0].set_title(f"{rec['image']} q{rec['quality']} tile ({tile.top},{tile.left}): {label} {gain((rec, t)):+.3f} dB")
        axes[row, 1].imshow(err_before.numpy(), cmap="magma")
        axes[row, 1].set_title("|error| at λ* = λ_t")
        lim = float(change.abs().quantile(0.99)) or 1.0
        axes[row, 2].imshow(change.numpy(), cmap="coolwarm_r", vmin=-lim, vmax=lim)
        axes[row, 2].set_title("error decrease with λ* (blue: better)")
        for ax in axes[row]:
            ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kodak", default=str(ROOT.parent / "shared" / "data" / "kodak"))
    parser.add_argument("--weights", default=None, help="oml weights (default: the shipped default model)")
    parser.add_argument("--out", default="docs/data")
    parser.add_argument("--qualities", type=int, nargs="+", default=[1, 2, 3, 4])
    parser.add_argument("--record", type=int, nargs="+", default=[5, 20, 99])
    parser.add_argument("--metric", default="psnr", choices=["psnr", "ms-ssim"])
    parser.add_argument("--limit", type=int, default=0, help="first N images only")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="quick adaptation instead of the paper's search (--record is ignored)")
    args = parser.parse_args(argv)
    if args.quick:
        args.record = [1]
    kodak = Path(args.kodak)
    paths = sorted(kodak.glob("*.png"))[: args.limit or None]
    tasks = [(str(p), q, 0 if args.quick else max(args.record), args.metric) for q in args.qualities for p in paths]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    records = []
    with mp.get_context("spawn").Pool(args.workers, initializer=_init, initargs=(args.weights,)) as pool:
        for i, rec in enumerate(pool.imap_unordered(_task, tasks), 1):
            records.append(rec)
            print(f"[{i}/{len(tasks)}] {rec['image']} q{rec['quality']}", file=sys.stderr, flush=True)
    summary = summarize(records, args.record, args.metric, {1: "quick"} if args.quick else None)
    summary["command"] = "python bench/adapt_study.py " + " ".join(argv if argv is not None else sys.argv[1:])
    (out / f"adapt_{args.metric}.json").write_text(json.dumps({"summary": summary, "records": records}))
    (out / f"adapt_{args.metric}_summary.json").write_text(json.dumps(summary, indent=1))
    plot_gain_time(records, args.metric, out / f"gain_time_{args.metric}.png")
    plot_change_maps(records, kodak, args.weights, args.metric, out / f"change_maps_{args.metric}.png")
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
