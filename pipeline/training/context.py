"""Train a checkerboard context on a frozen default model, and write the weights file with it.

The transforms, the hyperprior and the decoder (its modulators and λ-offset branches
included) are kept bit for bit; only :class:`~oml.models.checkerboard.CheckerboardContext`
learns, on rate alone, from latents computed once: random 256² crops of the training photos
(the held-out ones excluded, as in base training), a λ per crop drawn log-uniformly over the
model's qualities. Because nothing the decoder sees changes except the rounding of ŷ (μ
moves a little), the decoder needs no re-training and online adaptation keeps its branches.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from compressai.ops import quantize_ste
from torch import Tensor, nn

from oml.imageio import decode_image
from oml.models.checkerboard import CheckerboardContext
from oml.models.zoo import MSE_LAMBDAS, load_model, save_weights
from oml.train import random_crops, sample_lambdas
from pipeline import storage


@dataclass(frozen=True)
class ContextTrainConfig:
    data_dir: str
    out_dir: str
    weights: str = ""
    steps: int = 10_000
    batch: int = 16
    crop: int = 256
    crops_per_image: int = 12
    lr: float = 1e-3
    final_lr: float = 1e-5
    rate: str = "noise"
    holdout_every: int = 50
    seed: int = 0
    threads: int = 2
    log_every: int = 100


def y_bits(gc: nn.Module, values: Tensor, scales: Tensor, means: Tensor) -> Tensor:
    """−log2 of the Gaussian conditional's likelihood of ``values``, summed per item ``(B,)``."""
    like = gc._likelihood(values, scales, means=means)
    like = gc.likelihood_lower_bound(like) if gc.use_likelihood_bound else like
    return -torch.log2(like).flatten(1).sum(1)


@torch.no_grad()
def hyper(net: nn.Module, x: Tensor, lm: Tensor) -> tuple[Tensor, Tensor]:
    """y and the hyperprior's parameters from the coded ẑ (``round(z − median) + median``)."""
    y = net.g_a(x, lm)
    z = net.h_a(y)
    medians = net.entropy_bottleneck.quantiles[:, 0, 1].view(1, -1, 1, 1)
    return y, net.h_s(torch.round(z - medians) + medians)


@torch.no_grad()
def latents(net: nn.Module, images: list[Tensor], count: int, crop: int, low: float, high: float, gen: torch.Generator) -> tuple[Tensor, Tensor]:
    """``count`` (y, params) pairs of random crops, 32 at a time."""
    ys, ps = [], []
    for start in range(0, count, 32):
        n = min(32, count - start)
        y, params = hyper(net, random_crops(images, n, crop, gen), sample_lambdas(n, low, high, gen))
        ys.append(y)
        ps.append(params)
    return torch.cat(ys), torch.cat(ps)


def rate_loss(ctx: CheckerboardContext, gc: nn.Module, y: Tensor, params: Tensor, rate: str, gen: torch.Generator) -> tuple[Tensor, Tensor]:
    """Bits per latent item ``(B,)`` with the context, and without it (the hyperprior alone), under the
    rate quantiser ``noise`` (y + U(−½, ½)) or ``round`` (straight-through rounding about μ)."""
    scales, means = ctx(y, params)
    base_scales, base_means = params.chunk(2, 1)
    if rate == "noise":
        noisy = y + torch.empty_like(y).uniform_(-0.5, 0.5, generator=gen)
        return y_bits(gc, noisy, scales, means), y_bits(gc, noisy, base_scales, base_means).detach()
    with_ctx = y_bits(gc, quantize_ste(y - means) + means, scales, means)
    return with_ctx, y_bits(gc, torch.round(y - base_means) + base_means, base_scales, base_means).detach()


def run_context_training(cfg: ContextTrainConfig) -> dict:
    """Train, then write ``OUT_DIR/oml-default.pt`` (the input weights plus the context, float16)
    and ``OUT_DIR/context_log.jsonl``; returns a summary."""
    if cfg.rate not in ("noise", "round"):
        raise ValueError(f"rate must be noise or round, got {cfg.rate!r}")
    torch.set_num_threads(cfg.threads)
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model = load_model("oml-default", 1, weights=cfg.weights or None, all_qualities=True)
    net = model.encoders["0"].eval()
    if net.context is not None:
        raise ValueError(f"{cfg.weights or 'the shipped weights'} already hold a checkerboard context")
    for p in model.parameters():
        p.requires_grad_(False)
    uris = storage.list_images(cfg.data_dir)
    images = [decode_image(storage.read_bytes(u), to_srgb=True) for i, u in enumerate(uris) if not (cfg.holdout_every and i % cfg.holdout_every == 0)]
    images = [img for img in images if min(img.shape[1:]) >= cfg.crop]
    if not images:
        raise ValueError(f"no training photo in {cfg.data_dir} is at least {cfg.crop}² pixels")
    gen = torch.Generator().manual_seed(cfg.seed)
    low, high = min(MSE_LAMBDAS[q] for q in model.lambdas), max(MSE_LAMBDAS[q] for q in model.lambdas)
    t0 = time.time()
    y, params = latents(net, images, len(images) * cfg.crops_per_image, cfg.crop, low, high, gen)
    log_path = out / "context_log.jsonl"
    with log_path.open("a") as log:
        log.write(json.dumps({"event": "start", "config": asdict(cfg), "latents": int(y.shape[0]), "photos": len(images), "latent_s": round(time.time() - t0, 1)}) + "\n")
        ctx = CheckerboardContext(net.M)
        opt = torch.optim.Adam(ctx.parameters(), lr=cfg.lr)
        pixels = cfg.crop * cfg.crop
        gc = net.gaussian_conditional
        t0 = time.time()
        for step in range(1, cfg.steps + 1):
            lr = cfg.final_lr + 0.5 * (cfg.lr - cfg.final_lr) * (1 + math.cos(math.pi * step / cfg.steps))
            for g in opt.param_groups:
                g["lr"] = lr
            idx = torch.randint(y.shape[0], (cfg.batch,), generator=gen)
            yb, pb = y[idx], params[idx]
            if torch.rand(1, generator=gen).item() < 0.5:
                yb, pb = yb.flip(3), pb.flip(3)
            bits, base = rate_loss(ctx, gc, yb, pb, cfg.rate, gen)
            loss = bits.mean() / pixels
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(ctx.parameters(), 1.0)
            opt.step()
            if step % cfg.log_every == 0 or step == cfg.steps:
                row = {"step": step, "lr": lr, "bpp_y": round(loss.item(), 5), "bpp_y_hyperprior": round(base.mean().item() / pixels, 5), "s_per_step": round((time.time() - t0) / step, 4)}
                log.write(json.dumps(row) + "\n")
                log.flush()
    net.context = ctx.eval()
    model.update_entropy_models(force=False)  # fingerprints and codecs are rebuilt with the context
    path = out / "oml-default.pt"
    save_weights(model, path, dtype=torch.float16)
    return {"weights": str(path), "log": str(log_path), "steps": cfg.steps, "seconds": round(time.time() - t0, 1)}
