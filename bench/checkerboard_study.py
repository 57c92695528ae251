"""Is a checkerboard context worth it for the default model? Train one on frozen latents, measure on Kodak.

    python bench/checkerboard_study.py --steps 3000 --out runs/checkerboard

1. Latents of the shipped model (``oml/weights/oml-default.pt``) for random 256² crops of the
   training photos (the five held-out photos excluded), a λ per crop drawn log-uniformly over
   the trained range: y, and the hyperprior's (σ, μ) from the coded ẑ. The transforms and the
   hyperprior stay frozen: only the context (:mod:`oml.models.checkerboard`) trains, on rate alone.
2. Adam on the rate (y plus uniform noise under the refined Gaussian), cosine decay.
3. Kodak (never trained on), whole images, at qualities 1–6: bits of the rounded latent as a
   range coder would spend them with the hyperprior alone and with the checkerboard context
   (continuous scales, so both lack the scale table's small cost alike), ẑ's bits added to both,
   and the PSNR of the decoder's output for each (ŷ moves with μ).

Writes ``OUT/context.pt`` (the trained context, float32) and ``OUT/kodak.json``; prints the table.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch
from compressai.ops import quantize_ste

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from oml.models.checkerboard import CheckerboardContext, anchor_mask  # noqa: E402

LAMBDAS = {1: 0.0018, 2: 0.0035, 3: 0.0067, 4: 0.0130, 5: 0.0250, 6: 0.0483}


def bits(gc, values: torch.Tensor, scales: torch.Tensor, means: torch.Tensor) -> torch.Tensor:
    """−log2 likelihood summed per item of the batch."""
    like = gc._likelihood(values, scales, means=means)
    like = gc.likelihood_lower_bound(like) if gc.use_likelihood_bound else like
    return -torch.log2(like).flatten(1).sum(1)


def hyper(net, x: torch.Tensor, lm: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """y, hyperprior (σ, μ) from the coded ẑ, and ẑ's bits per item."""
    y = net.g_a(x, lm)
    z = net.h_a(y)
    eb = net.entropy_bottleneck
    medians = eb.quantiles[:, 0, 1].view(1, -1, 1, 1)
    z_hat = torch.round(z - medians) + medians
    b, c, h, w = z_hat.shape
    like = eb._likelihood(z_hat.permute(1, 0, 2, 3).reshape(c, 1, -1))[0].reshape(c, b, h, w).permute(1, 0, 2, 3)
    like = eb.likelihood_lower_bound(like) if eb.use_likelihood_bound else like
    z_bits = -torch.log2(like).flatten(1).sum(1)
    return y, net.h_s(z_hat), z_bits


@torch.no_grad()
def latents(net, images: list[torch.Tensor], per_image: int, size: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    from oml.train import random_crops, sample_lambdas

    ys, ps = [], []
    for i in range(0, len(images) * per_image, 32):
        x = random_crops(images, 32, size, gen)
        lm = sample_lambdas(32, LAMBDAS[1], LAMBDAS[6], gen)
        y, params, _ = hyper(net, x, lm)
        ys.append(y)
        ps.append(params)
    return torch.cat(ys), torch.cat(ps)


def train(ctx: CheckerboardContext, gc, y: torch.Tensor, params: torch.Tensor, steps: int, batch: int, lr: float, gen: torch.Generator, log, rate: str = "noise") -> None:
    opt = torch.optim.Adam(ctx.parameters(), lr=lr)
    pixels = (y.shape[2] * 16) * (y.shape[3] * 16)
    t0 = time.time()
    for step in range(1, steps + 1):
        for g in opt.param_groups:
            g["lr"] = 1e-5 + 0.5 * (lr - 1e-5) * (1 + math.cos(math.pi * step / steps))
        idx = torch.randint(y.shape[0], (batch,), generator=gen)
        yb, pb = y[idx], params[idx]
        if torch.rand(1, generator=gen).item() < 0.5:
            yb, pb = yb.flip(3), pb.flip(3)
        scales, means = ctx(yb, pb)
        noisy = yb + torch.empty_like(yb).uniform_(-0.5, 0.5, generator=gen)
        coded = noisy if rate == "noise" else quantize_ste(yb - means) + means
        loss = bits(gc, coded, scales, means).mean() / pixels
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(ctx.parameters(), 1.0)
        opt.step()
        if step % 100 == 0 or step == 1:
            with torch.no_grad():
                base_s, base_m = pb.chunk(2, 1)
                base_coded = noisy if rate == "noise" else torch.round(yb - base_m) + base_m
                base = (bits(gc, base_coded, base_s, base_m).mean() / pixels).item()
            log(f"step {step}: {loss.item():.4f} bpp (hyperprior alone {base:.4f}), {(time.time() - t0) / step:.2f} s/step")


@torch.no_grad()
def kodak(net, ctx: CheckerboardContext, gc, paths: list[Path]) -> list[dict]:
    from oml.imageio import decode_image

    rows = []
    for q, lmbda in LAMBDAS.items():
        tot = {"hyper_bits": 0.0, "ctx_bits": 0.0, "pixels": 0, "hyper_sse": 0.0, "ctx_sse": 0.0}
        for p in paths:
            x = decode_image(p.read_bytes()).float().unsqueeze(0) / 255
            h, w = x.shape[2:]
            pad_h, pad_w = (-h) % 64, (-w) % 64
            xp = torch.nn.functional.pad(x, (0, pad_w, 0, pad_h), mode="replicate")
            lm = torch.full((1,), lmbda)
            y, params, z_bits = hyper(net, xp, lm)
            scales, means = params.chunk(2, 1)
            y_hyper = torch.round(y - means) + means
            b_hyper = bits(gc, y_hyper, scales, means)
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
            tot["hyper_bits"] += float(b_hyper.sum() + z_bits.sum())
            tot["ctx_bits"] += float(b_ctx + z_bits.sum())
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
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--crops-per-image", type=int, default=12)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rate", choices=("noise", "round"), default="noise", help="the rate term's quantiser: uniform noise, or rounding with a straight-through gradient")
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "train"))
    ap.add_argument("--kodak", default=str(ROOT.parent / "shared" / "data" / "kodak"))
    ap.add_argument("--out", default="runs/checkerboard")
    args = ap.parse_args(argv)

    from oml.imageio import decode_image
    from oml.models.zoo import load_model

    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    def log(msg: str) -> None:
        print(msg, flush=True)

    model = load_model("oml-default", 1, all_qualities=True)
    net = model.encoders["0"].eval()
    for p in net.parameters():
        p.requires_grad_(False)
    gc = net.gaussian_conditional
    photos = sorted(Path(args.data).glob("*.png"))
    train_images = [decode_image(p.read_bytes()) for i, p in enumerate(photos) if i % 50 != 0]
    train_images = [img for img in train_images if min(img.shape[1:]) >= 256]  # a few photos are smaller
    gen = torch.Generator().manual_seed(0)
    t0 = time.time()
    y, params = latents(net, train_images, args.crops_per_image, 256, gen)
    log(f"{y.shape[0]} latents of {len(train_images)} photos in {time.time() - t0:.0f} s")
    ctx = CheckerboardContext(net.M)
    train(ctx, gc, y, params, args.steps, args.batch, args.lr, gen, log, args.rate)
    torch.save({"state_dict": ctx.state_dict(), "steps": args.steps}, out / "context.pt")
    rows = kodak(net, ctx.eval(), gc, sorted(Path(args.kodak).glob("*.png")))
    (out / "kodak.json").write_text(json.dumps(rows, indent=1))
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
