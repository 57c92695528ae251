"""Demo: archive photographs with the default model on a local Ray, restore and verify them.

Uses ../shared/data/kodak when it is there, otherwise the colour photographs that
scikit-image ships. Everything goes under --out (default out/demo).

    python jobs/demo.py [--effort default] [--quality 3] [--out out/demo]
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from oml.names import DEFAULT_EFFORT, EFFORTS

ROOT = Path(__file__).resolve().parents[1]
KODAK = ROOT.parent / "shared" / "data" / "kodak"
SKIMAGE_PHOTOS = ("astronaut.png", "coffee.png", "chelsea.png", "rocket.jpg", "motorcycle_left.png", "hubble_deep_field.jpg")


def demo_inputs(out: Path) -> Path:
    """Kodak if present, else scikit-image's bundled photographs copied to ``out/input``."""
    if KODAK.is_dir() and any(KODAK.glob("*.png")):
        return KODAK
    try:
        import skimage
    except ImportError:
        raise SystemExit("demo: no ../shared/data/kodak and no scikit-image; run scripts/setup.sh first") from None
    folder = out / "input"
    folder.mkdir(parents=True, exist_ok=True)
    data = Path(skimage.__file__).parent / "data"
    for name in SKIMAGE_PHOTOS:
        if (data / name).exists():
            (folder / name).write_bytes((data / name).read_bytes())
    return folder


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="out/demo", help="folder for the archive and the restored images")
    parser.add_argument("--quality", type=int, default=3, help="quality 1-6 (default 3)")
    parser.add_argument("--effort", default=DEFAULT_EFFORT, choices=EFFORTS, help=f"encoder effort, as oml archive --effort (default {DEFAULT_EFFORT})")
    parser.add_argument("--num-cpus", type=int, help="CPUs for the local Ray (default: all)")
    args = parser.parse_args(argv)

    from oml.effort import coding_effort
    from pipeline.archive import CodingConfig, CompressConfig, DecompressConfig, RayConfig, run_compress, run_decompress

    out = Path(args.out)
    inputs = demo_inputs(out)
    ray = RayConfig(num_cpus=args.num_cpus)
    effort = coding_effort(args.effort)
    coding = CodingConfig(args.quality, effort.adapt.steps, refine=effort.refine.iterations, quick=effort.adapt.quick, to_srgb=True)
    print(f"demo: archiving {inputs} with oml-default, quality {args.quality}, effort {args.effort}")
    report = run_compress(CompressConfig(input=str(inputs), output=str(out / "archive"), coding=coding, ray=ray))
    restored = run_decompress(DecompressConfig(input=str(out / "archive"), output=str(out / "restored"), verify=True, ray=ray))
    summary = report.summary
    print(json.dumps({k: summary[k] for k in summary if not isinstance(summary[k], (list, dict))}, indent=1))
    print(f"demo: {report.archived}/{report.images} images archived in {out / 'archive'}; "
          f"{restored.restored} restored to {out / 'restored'}, {restored.mismatched} failed verification")
    return 0 if report.exit_code == 0 and restored.exit_code == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
