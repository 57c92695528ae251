"""Export a base-training checkpoint as the default model's weights file (float16).

    python jobs/export_weights.py runs/default/last.pt runs/default/next.pt \
        --offsets-from oml/weights/oml-default.pt

CHECKPOINT may also be an oml weights file of the default model, such as the
float32 one ``jobs/metatrain.py`` writes: it is re-saved as float16.

The weights file records the step it was taken at, so it is itself the point a later
run continues from: ``python jobs/train_base.py ... --init runs/default/next.pt``.
``--resume-point`` also writes a compact checkpoint without the λ-offset branches
(the float16 weight average, step and config), for runs kept outside the repository.
"""

from __future__ import annotations

import argparse
import sys

from oml.names import ModelUnavailableError
from pipeline.training.base import export_default_weights, save_resume_point


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", help="training checkpoint (last.pt) or oml weights file")
    parser.add_argument("output", help="oml weights file to write")
    parser.add_argument("--float32", action="store_true", help="keep float32 (default: float16, half the size)")
    parser.add_argument("--raw", action="store_true", help="export the raw weights, not their moving average")
    parser.add_argument("--resume-point", help="also write a compact resumable checkpoint here")
    parser.add_argument("--offsets-from", help="oml weights file whose λ-offset branches the exported decoder takes over")
    args = parser.parse_args(argv)
    try:
        print(export_default_weights(args.checkpoint, args.output, half=not args.float32, ema=not args.raw, offsets_from=args.offsets_from))
        if args.resume_point:
            print(save_resume_point(args.checkpoint, args.resume_point))
    except (OSError, ValueError, ModelUnavailableError) as exc:
        print(f"export_weights: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
