"""Batched or one-at-a-time step-size probes: the time of one adaptation, measured in one run.

On a GPU a batch of six probes is one kernel launch per layer; on a CPU the batch
can be slower than six passes. This prints the ratio on the machine it runs on, which is
what sets ``oml.adapt.adapt``'s default ``probe_chunk`` (6 on CUDA, 1 on CPU).

    python bench/adapt_batching.py --steps 5 --repeats 3
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from oml import tiling
from oml.adapt import adapt
from oml.imageio import decode_image
from oml.models.zoo import load_model

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image", default=str(ROOT.parent / "shared" / "data" / "kodak" / "kodim05.png"))
    parser.add_argument("--quality", type=int, default=1)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = load_model("oml-default")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model.to(device)
    image = decode_image(Path(args.image).read_bytes())
    tile = tiling.tile_grid(*image.shape[1:])[0]
    x = tiling.split(image, [tile])[0].float().div(255).unsqueeze(0).to(device)
    lmbda = model.lambdas[args.quality]
    code = model.encode_latent(tiling.pad(x), args.quality, lmbda)
    with torch.no_grad():
        h = model.synthesis.prefix(code.y_hat, torch.tensor([lmbda], device=device))
    times = {1: 0.0, 6: 0.0}
    for _ in range(args.repeats):
        for chunk in times:
            t0 = time.perf_counter()
            adapt(model.synthesis, h, x, lmbda, args.steps, probe_chunk=chunk)
            if device == "cuda":
                torch.cuda.synchronize()
            times[chunk] += time.perf_counter() - t0
    print(f"{device}, {tile.width}x{tile.height} tile, N={args.steps}: probes one at a time {times[1] / args.repeats:.2f} s, "
          f"six per pass {times[6] / args.repeats:.2f} s; batched / one-at-a-time = {times[6] / times[1]:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
