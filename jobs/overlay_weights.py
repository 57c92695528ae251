"""Write a weights file as an overlay of another: only the tensors that differ from it.

    python jobs/metatrain.py --weights oml/weights/oml-default.pt --mode offset --steps 300 --outer-lr 1e-2 \\
        --storage-path runs/meta --name branches
    git mv oml/weights/oml-default.pt oml/weights/oml-default-v11.pt
    python jobs/overlay_weights.py runs/meta/branches/oml-default-meta-offset.pt \\
        oml/weights/oml-default-v11.pt oml/weights/oml-default.pt
    python jobs/release_weights.py v12

The overlay loads wherever its base lies beside it or is a release on the weights path (found by
SHA-256, so the base may be renamed later) and decodes exactly as the whole file does: re-trained
λ-offset branches ship in kilobytes instead of a second copy of the model (docs/DESIGN.md,
"Shipped weights").
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from oml.names import ModelUnavailableError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("whole", help="oml weights file to store (e.g. a meta-training result)")
    parser.add_argument("base", help="whole oml weights file it differs from; the overlay must be kept beside it")
    parser.add_argument("output", help="overlay file to write (in the base's folder)")
    args = parser.parse_args(argv)
    whole, base, output = Path(args.whole), Path(args.base), Path(args.output)
    if output.resolve() in (whole.resolve(), base.resolve()):
        print("overlay_weights: the output would overwrite an input", file=sys.stderr)
        return 2
    if output.resolve().parent != base.resolve().parent:
        print(f"overlay_weights: write the overlay into {base.parent}, beside its base (it is found there)", file=sys.stderr)
        return 2
    from oml.models.zoo import save_overlay

    try:
        stored = save_overlay(whole, base, output)
    except (OSError, ValueError, ModelUnavailableError) as exc:
        print(f"overlay_weights: {exc}", file=sys.stderr)
        return 2
    print(f"{output}: {len(stored)} tensors differ from {base.name}, {output.stat().st_size / 1e3:.1f} kB (whole: {whole.stat().st_size / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
