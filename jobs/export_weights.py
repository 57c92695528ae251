"""Export a base-training checkpoint as the default model's weights file (float16).

    python jobs/export_weights.py runs/default/last.pt oml/weights/oml-default.pt
"""

from __future__ import annotations

import argparse

from pipeline.train import export_default_weights


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", help="training checkpoint (last.pt)")
    parser.add_argument("output", help="oml weights file to write")
    parser.add_argument("--float32", action="store_true", help="keep float32 (default: float16, half the size)")
    args = parser.parse_args(argv)
    print(export_default_weights(args.checkpoint, args.output, half=not args.float32))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
