"""``oml decompress``: ``.oml`` files to PNG, whole or a window of one."""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

from tqdm import tqdm

from oml.names import CODED_SUFFIX, MODEL_IDS
from pipeline.cli.args import UserError, first_quality
from pipeline.cli.local import clean_outputs, expand_inputs, output_paths, run_each, single_output, write_output


def cmd_decompress(args: argparse.Namespace) -> int:
    from oml import codec, metadata, tiling
    from oml.imageio import encode_png
    from oml.models.zoo import load_decoder

    unlisted: list[str] = []
    files = expand_inputs(args.inputs, (CODED_SUFFIX,), unlisted)
    if args.region is not None and len(files) != 1:
        raise UserError(f"--region restores a window of one image; {len(files)} .oml files were given")
    outs = output_paths(files, args.inputs, args.output, ".png")
    clean_outputs(outs)
    replace = args.overwrite or single_output(files, args.inputs, args.output)  # a file -o names itself is replaced
    models: dict[tuple[str, int, bytes, int], object] = {}

    def work(src: Path, dst: Path) -> str:
        data = src.read_bytes()
        header = codec.read_header(data)
        quality = header.quality or first_quality(header.model)
        if header.model not in MODEL_IDS:
            raise codec.CodecError(f"coded with model {header.model!r}, which this build does not know")
        key = (header.model, quality if header.quality else 0, header.fingerprint, header.version)
        if key not in models:  # the file names its model and weights version; never downloads
            models[key] = load_decoder(header.model, quality, header.fingerprint, header.version, weights=args.weights)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", codec.PortabilityWarning)
            if args.region is None:
                image = codec.decode(models[key], data, metric=args.metric, max_pixels=args.max_pixels)
            else:
                image = codec.decode_region(models[key], data, tiling.Region(*args.region), metric=args.metric)
        for w in caught:
            tqdm.write(f"warning: {src}: {w.message}", file=sys.stderr)
        blocks = header.source.blocks if header.source is not None else ()
        wrote = write_output(dst, metadata.write_png(encode_png(image), blocks), replace)  # the source's metadata, back as it was
        window = "" if args.region is None else " window {},{} {}x{} of".format(*args.region)
        return f"{src} -> {dst}:{window} {header.width}x{header.height}{'' if wrote else ' (already there, the same bytes)'}"

    return max(run_each(list(zip(files, outs)), work, "decompress"), 1 if unlisted else 0)
