"""Widen the default model's transforms, keeping what it computes (function-preserving).

    python jobs/widen_weights.py oml/weights/oml-default.pt runs/wide/init.pt --N 128
    python jobs/train_base.py --data-dir ../shared/data/train --out-dir runs/wide \\
        --init runs/wide/init.pt --N 128 ...

The wide file codes and decodes exactly as the source does on the source's channels (the added
channels start muted: oml/models/widen.py); only the hyper-latent's new channels cost bits until
training shapes them. It keeps the source's context, λ-offset branches and trained step.
"""

from __future__ import annotations

import argparse
import sys

from oml.names import ModelUnavailableError
from pipeline.training.base import widen_default_weights


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", help="oml-default weights file to widen")
    parser.add_argument("output", help="wider oml-default weights file to write")
    parser.add_argument("--N", type=int, required=True, help="channels of the wide transforms (at least the source's)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the added channels' fresh weights (default: %(default)s)")
    args = parser.parse_args(argv)
    try:
        print(widen_default_weights(args.source, args.output, args.N, args.seed))
    except (OSError, ValueError, ModelUnavailableError) as exc:
        print(f"widen_weights: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
