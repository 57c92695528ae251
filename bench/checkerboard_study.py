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

from oml.models.checkerboard import anchor_mask  # noqa: E402
from pipeline.train_context import hyper, y_bits  # noqa: E402

LAMBDAS = {1: 0.0018, 2: 0.0035, 3: 0.0067, 4: 0.0130, 5: 0.0250, 6: 0.0483}


def z_bits(net, y: torch.Tensor) -> torch.Tensor:
    """Bits of ẑ = round(z − median) + median under the factorised prior, summed."""
    z = net.h_a(y)
    eb = net.entropy_bottleneck
    medians = eb.quantiles[:, 0, 1].view(1, -1, 1, 1)
    z_hat = torch.round(z - medians) + medians
    b, c, h, w = z_hat.shape
    like = eb._likelihood(z_hat.permute(1, 0, 2, 3).reshape(c, 1, -1))[0]
    like = eb.likelihood_lower_bound(like) if eb.use_likelihood_bound else like
    return -torch.log2(like).sum()


@torch.no_grad()
def kodak(net, paths: list[Path]) -> list[dict]:
    from oml.imageio import decode_image

    ctx, gc = net.context, net.gaussian_conditional
    rows = []
    for q, lmbda in LAMBDAS.items():
        tot = {"hyper_bits": 0.0, "ctx_bits": 0.0, "pixels": 0, "hyper_sse": 0.0, "ctx_sse": 0.0}
        for p in paths:
            x = decode_image(p.read_bytes()).float().unsqueeze(0) / 255
            h, w = x.shape[2:]
            pad_h, pad_w = (-h) % 64, (-w) % 64
            xp = torch.nn.functional.pad(x, (0, pad_w, 0, pad_h), mode="replicate")
            lm = torch.full((1,), lmbda)
            y, params = hyper(net, xp, lm)
            zb = z_bits(net, y)
            scales, means = params.chunk(2, 1)
            y_hyper = torch.round(y - means) + means
            b_hyper = y_bits(gc, y_hyper, scales, means)
            anchors = anchor_mask(y.shape[2], y.shape[3])
            first = ctx.refine(params, torch.zeros_like(params))
            s_a, m_a = first.chunk(2, 1)
            y_a = (torch.round(y - m_a) + m_a) * anchors
            second = ctx.refine(params, ctx.context_prediction(y_a))
            s_n, m_n = second.chunk(2, 1)
            y_n = (torch.round(y - m_n) + m_n) * (1 - anchors)
            y_ctx = y_a + y_n
            like_a = gc._likelihood(y_ctx, s_a, means=m_a)
            like_n = gc._likelihood(y_ctx, s_n, means=m_n)
            like = like_a * anchors + like_n * (1 - anchors)
            like = gc.likelihood_lower_bound(like) if gc.use_likelihood_bound else like
            b_ctx = -torch.log2(like).sum()
            tot["hyper_bits"] += float(b_hyper.sum() + zb)
            tot["ctx_bits"] += float(b_ctx + zb)
            tot["pixels"] += h * w
            lm4 = lm.unsqueeze(1).expand(-1, 4)
            for key, y_hat in (("hyper_sse", y_hyper), ("ctx_sse", y_ctx)):
                x_hat = net.g_s(y_hat, lm4, lm).clamp(0, 1)[:, :, :h, :w]
                mse = float(((x_hat * 255).round() / 255 - x).pow(2).mean())
                tot[key] += -10 * math.log10(mse)
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
