r"""Seconds per base-training step, float32 against bfloat16 autocast (--amp), measured in one run.

    python bench/train_speed.py --device cuda --batch 16 --crop 256 --steps 30
    python bench/train_speed.py --device cpu --batch 4 --crop 256 --steps 5      # ~1 min on 2 cores

Random crops of noise (speed only), the default model's architecture with its checkerboard
context, the real training step (oml.train.train_step). Both settings alternate in rounds so a
noisy machine slows both alike; prints each one's median and the ratio (on stderr with --choose,
which prints only the faster setting's flag, "--amp" or "--no-amp", for a script to pass on).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

from oml.models.default import OMLHyperprior
from oml.train import configure_optimizers, train_step
from pipeline.training.base import training_device


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:K (default: %(default)s)")
    parser.add_argument("--batch", type=int, default=16, help="crops per step (default: %(default)s)")
    parser.add_argument("--crop", type=int, default=256, help="crop side (default: %(default)s)")
    parser.add_argument("--N", type=int, default=64, help="transform channels (default: %(default)s)")
    parser.add_argument("--M", type=int, default=128, help="latent channels (default: %(default)s)")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per setting and round (default: %(default)s)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds (default: %(default)s)")
    parser.add_argument("--choose", action="store_true", help="print only the faster setting's flag")
    args = parser.parse_args(argv)
    try:
        device = training_device(args.device)
    except ValueError as exc:
        print(f"train_speed: {exc}", file=sys.stderr)
        return 2
    torch.manual_seed(0)
    net = OMLHyperprior(args.N, args.M, context=True).to(device)
    optimizer, aux_optimizer = configure_optimizers(net, 1e-5, 1e-5)
    x = torch.rand(args.batch, 3, args.crop, args.crop, device=device)
    lmbda = torch.exp(torch.empty(args.batch, device=device).uniform_(-6.3, -3.0))
    times: dict[bool, list[float]] = {False: [], True: []}
    for amp in (False, True):  # warm-up: cuDNN's autotuning and the allocator, once per setting
        for _ in range(3):
            train_step(net, optimizer, aux_optimizer, x, lmbda, amp=amp)
    for _ in range(args.rounds):
        for amp in (False, True):
            _sync(device)
            t0 = time.perf_counter()
            for _ in range(args.steps):
                train_step(net, optimizer, aux_optimizer, x, lmbda, amp=amp)
            _sync(device)
            times[amp].append((time.perf_counter() - t0) / args.steps)
    fp32, bf16 = statistics.median(times[False]), statistics.median(times[True])
    line = f"device {device}, batch {args.batch} of {args.crop}², N={args.N} M={args.M}: float32 {fp32:.4f} s/step, --amp {bf16:.4f} s/step, amp/float32 {bf16 / fp32:.2f}"
    if args.choose:
        print(line, file=sys.stderr)
        print("--amp" if bf16 < fp32 else "--no-amp")
    else:
        print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
