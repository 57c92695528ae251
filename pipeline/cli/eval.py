"""``oml eval``: rate-distortion curves on a folder of images, against classical anchors."""

from __future__ import annotations

import argparse

from pipeline.cli.args import quality_group


def cmd_eval(args: argparse.Namespace) -> int:
    from pipeline.evaluate import EvalConfig, run_eval

    cfg = EvalConfig(
        inputs=args.inputs, output=args.output, model=args.model, weights=args.weights,
        qualities=tuple(args.quality or quality_group(args.model)), efforts=tuple(args.effort or ()),
        steps=tuple(args.steps or ([] if args.effort and args.refine is None else [0])), refine=tuple(args.refine or [0]), metric=args.metric,
        baselines=tuple(args.baselines), per_image=args.per_image, limit=args.limit, baselines_from=args.baselines_from,
    )
    result = run_eval(cfg)
    for name, pts in result["curves"].items():
        print(f"{name}: " + ", ".join(f"{p['bpp']:.3f} bpp/{p['psnr']:.2f} dB" for p in pts))
    ranges = result["bd_rate_psnr_range_db"]
    for key, value in result["bd_rate_percent"].items():
        span = f" (over {ranges[key][0]:.2f}-{ranges[key][1]:.2f} dB)" if ranges.get(key) else ""
        print(f"BD-rate {key}: {value if isinstance(value, str) else f'{value:+.2f}%'}{span}")
    taken = (result["anchors_from"] or {}).get("taken", [])
    for name, settings in result["anchors"].items():
        print(f"anchor {name}{' (from ' + args.baselines_from + ')' if name in taken else ''}: {settings['format']} {settings['options']} " + " ".join(f"{k} {v}" for k, v in settings["versions"].items()))
    print(f"wrote {args.output}/rd.json and {args.output}/rd.png")
    return 0
