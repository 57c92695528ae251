"""``oml compress``: images (files or folders) to ``.oml`` files."""

from __future__ import annotations

import argparse
from pathlib import Path

from oml.names import CODED_SUFFIX, IMAGE_SUFFIXES
from pipeline.cli.args import UserError, first_quality
from pipeline.cli.local import clean_outputs, expand_inputs, output_paths, run_each, write_output


def cmd_compress(args: argparse.Namespace) -> int:
    from oml import codec, metadata
    from oml.adapt import AdaptConfig
    from oml.imageio import decode
    from oml.models.zoo import load_model
    from oml.refine import RefineConfig

    from oml import ratecontrol

    if args.metadata_limit is not None and args.metadata_limit < 0:
        raise UserError("--metadata-limit must be 0 or more bytes")
    target = ratecontrol.target_from(args.target_psnr, args.target_bpp)
    if target is None and args.quality is None and args.lmbda is None:
        args.quality = 3
    unlisted: list[str] = []
    files = expand_inputs(args.inputs, IMAGE_SUFFIXES, unlisted)
    outs = output_paths(files, args.inputs, args.output, CODED_SUFFIX)
    clean_outputs(outs)
    quality = args.quality if args.quality is not None else 1
    model = load_model(args.model, quality if args.quality is not None else first_quality(args.model), weights=args.weights)
    if target is not None:
        ratecontrol.check_model(model)
    cfg = AdaptConfig(steps=args.steps, metrics=tuple(args.metric), quick=args.quick)
    search = RefineConfig(args.refine)

    def work(src: Path, dst: Path) -> str:
        data = src.read_bytes()
        decoded = decode(data, max_pixels=args.max_pixels, to_srgb=args.to_srgb)
        image = decoded.pixels
        source = metadata.source_of(data, src.name, src.stat().st_mtime, args.to_srgb, args.metadata_limit)
        note = "".join(f"; {n}" for n in decoded.notes)  # a depth reduction or colour conversion is said
        if source.cut:
            note += f"; metadata over the {args.metadata_limit}-byte limit left out: {', '.join(source.cut)}"
        if target is None:
            enc = codec.encode(model, image, quality=args.quality, lmbda=args.lmbda, adapt_config=cfg, tile_size=args.tile, refine_config=search)
        else:
            result = ratecontrol.encode_to_target(model, image, target, cfg, tile_size=args.tile, refine_config=search)
            enc, note = result.encoded, note + "; " + ratecontrol.reached(result, target)
        enc = enc._replace(data=codec.with_source(enc.data, source))
        write_output(dst, enc.data)
        h, w = image.shape[1:]
        psnr = ratecontrol.image_psnr(enc.reconstruction, image)
        return f"{src} -> {dst}: {w}x{h}, {len(enc.data)} bytes, {8 * len(enc.data) / (h * w):.4f} bpp, PSNR {psnr:.2f} dB{note}"

    return max(run_each(list(zip(files, outs)), work, "compress"), 1 if unlisted else 0)
