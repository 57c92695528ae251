"""What the checkerboard context buys on Kodak: estimated bits with and without it, same weights.

    python jobs/train_context.py --data-dir ../shared/data/train --out-dir runs/context --rate round --steps 6000
    python bench/checkerboard_study.py runs/context/oml-default.pt --json docs/data/checkerboard_kodak.json

For the 24 Kodak images (whole, never trained on) at qualities 1–6: the bits of the rounded
latent as a range coder spends them, with the hyperprior alone (the weights minus their context:
v2 exactly) and with the checkerboard context, ẑ's bits added to both; and the PSNR of the
decoder's 8-bit output for each (ŷ moves with the refined μ). Scales are continuous here, so
both lack the scale table's small cost alike; `oml eval` measures the real files.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from oml.models.zoo import MSE_LAMBDAS  # noqa: E402

LAMBDAS = {q: MSE_LAMBDAS[q] for q in range(1, 7)}  # the default model's qualities


@torch.no_grad()
def kodak(net, paths: list[Path]) -> list[dict]:
    from oml.imageio import decode_image
    from oml.meta import latent_and_bits

    rows = []
    for q, lmbda in LAMBDAS.items():
        tot = {"hyper_bits": 0.0, "ctx_bits": 0.0, "pixels": 0, "hyper_sse": 0.0, "ctx_sse": 0.0}
        for p in paths:
            x = decode_image(p.read_bytes()).float().unsqueeze(0) / 255
            h, w = x.shape[2:]
            xp = torch.nn.functional.pad(x, (0, (-w) % 64, 0, (-h) % 64), mode="replicate")
            lm = torch.full((1,), lmbda)
            y = net.g_a(xp, lm)
            tot["pixels"] += h * w
            for kind, key in (("mean_scale", "hyper"), ("checkerboard", "ctx")):
                y_hat, bits = latent_and_bits(kind, net, y)  # ŷ, and the bits of ŷ and ẑ
                tot[f"{key}_bits"] += float(bits.sum())
                x_hat = net.g_s(y_hat, lm.unsqueeze(1).expand(-1, 4), lm).clamp(0, 1)[:, :, :h, :w]
                tot[f"{key}_sse"] += -10 * math.log10(float(((x_hat * 255).round() / 255 - x).pow(2).mean()))
        n = len(paths)
        row = {
            "quality": q,
            "lambda": lmbda,
            "bpp_hyperprior": tot["hyper_bits"] / tot["pixels"],
            "bpp_checkerboard": tot["ctx_bits"] / tot["pixels"],
            "psnr_hyperprior": tot["hyper_sse"] / n,
            "psnr_checkerboard": tot["ctx_sse"] / n,
        }
        row["saving"] = 1 - row["bpp_checkerboard"] / row["bpp_hyperprior"]
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("weights", help="default-model weights with a checkerboard context (jobs/train_context.py)")
    ap.add_argument("--kodak", default=str(ROOT.parent / "shared" / "data" / "kodak"))
    ap.add_argument("--json", help="write the table here")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)

    from oml.models.zoo import load_model

    torch.set_num_threads(args.threads)
    net = load_model("oml-default", 1, weights=args.weights, all_qualities=True).encoders["0"].eval()
    if net.context is None:
        raise SystemExit(f"{args.weights} has no checkerboard context")
    rows = kodak(net, sorted(Path(args.kodak).glob("*.png")))
    if args.json:
        Path(args.json).write_text(json.dumps({"weights": Path(args.weights).name, "rows": rows}, indent=1) + "\n")
    print("| q | λ | bpp hyperprior | bpp checkerboard | saving | PSNR hyperprior | PSNR checkerboard |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['quality']} | {r['lambda']} | {r['bpp_hyperprior']:.4f} | {r['bpp_checkerboard']:.4f} | "
            f"{100 * r['saving']:.1f} % | {r['psnr_hyperprior']:.2f} | {r['psnr_checkerboard']:.2f} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
