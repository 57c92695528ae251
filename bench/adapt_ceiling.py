"""How much can per-tile channel scaling of the decoder gain at all? An upper reference for online adaptation.

Online adaptation moves K = 4 values λ^k per tile, and each only rescales the
channels of one decoding block's output. This script frees all of those channel
scales instead: per tile, one log-scale per channel after each block (195 values
for the default model, against 4), fitted by Adam on the tile's MSE with the latent
fixed, as adaptation does. The gain it finds bounds what any λ^k modulation of
this decoder (paper, ``offset`` branches, or otherwise) could reach on that tile,
even before paying for 195 float16 values per tile in the file.

    python bench/adapt_ceiling.py --images 6 --qualities 1 --steps 100
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch

from oml import tiling
from oml.imageio import decode_image
from oml.models.zoo import load_model

ROOT = Path(__file__).resolve().parents[1]


def tile_ceiling(model, x: torch.Tensor, quality: int, steps: int, lr: float) -> float:
    """PSNR gain (dB) of free per-channel scales over plain decoding (λ* = λ_t) on one tile."""
    syn = model.synthesis
    lmbda = model.lambdas[quality]
    code = model.encode_latent(tiling.pad(x), quality, lmbda)
    coded = torch.tensor([lmbda])
    with torch.no_grad():
        h0 = syn.prefix(code.y_hat, coded)
        base_scales = [mod.scales(coded) for mod in syn.modulators]
    deltas = [torch.zeros_like(s, requires_grad=True) for s in base_scales]
    optimizer = torch.optim.Adam(deltas, lr=lr)

    def mse() -> torch.Tensor:
        h = h0
        for k, (scale, delta) in enumerate(zip(base_scales, deltas)):
            if k:
                h = syn.blocks[k](h)
            h = h * (scale * delta.exp())[:, :, None, None]
        return (h[..., : x.shape[-2], : x.shape[-1]].clamp(0, 1) - x).pow(2).mean()

    with torch.no_grad():
        before = float(mse())
    for _ in range(steps):
        optimizer.zero_grad()
        loss = mse()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        after = float(mse())
    return 10 * math.log10(before / min(before, after))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kodak", default=str(ROOT.parent / "shared" / "data" / "kodak"))
    parser.add_argument("--weights", default=None, help="oml weights (default: the shipped default model)")
    parser.add_argument("--images", type=int, default=6, help="first N Kodak images (their top-left 512² tile)")
    parser.add_argument("--qualities", type=int, nargs="+", default=[1])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--out", default="", help="write the results as JSON here")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    model = load_model("oml-default", weights=args.weights)
    model.requires_grad_(False)
    paths = sorted(Path(args.kodak).glob("*.png"))[: args.images]
    if not paths:
        parser.error(f"no PNG images in {args.kodak}")
    rows = []
    for q in args.qualities:
        for path in paths:
            image = decode_image(path.read_bytes())
            tile = tiling.tile_grid(*image.shape[1:])[0]
            x = tiling.split(image, [tile])[0].float().div(255).unsqueeze(0)
            gain = tile_ceiling(model, x, q, args.steps, args.lr)
            rows.append({"image": path.name, "quality": q, "gain_db": gain})
            print(f"{path.name} q{q}: free channel scales {gain:+.3f} dB", file=sys.stderr, flush=True)
    summary = {q: sum(r["gain_db"] for r in rows if r["quality"] == q) / len(paths) for q in args.qualities}
    for q, g in summary.items():
        print(f"q{q}: mean ceiling gain {g:+.3f} dB over {len(paths)} tiles ({args.steps} Adam steps)")
    if args.out:
        command = "python bench/adapt_ceiling.py " + " ".join(argv if argv is not None else sys.argv[1:])
        Path(args.out).write_text(json.dumps({"command": command, "mean_gain_db": summary, "tiles": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
