"""The ``oml`` command's parser and entry point: one module per sub-command (compress, decompress, info,
eval; archive and restore on Ray), the flags they share in :mod:`pipeline.cli.args`."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from oml.names import ANCHORS, DEFAULT_MAX_PIXELS, DEFAULT_MODEL, EFFORTS, METRICS, MODEL_IDS, PLAIN, STRONGEST_ANCHORS, ModelUnavailableError
from pipeline.cli.archive import ARCHIVE_DOC, RESTORE_DOC, add_archive_arguments, add_restore_arguments, run_archive, run_restore
from pipeline.cli.args import StoppedError, UserError, add_coding_arguments, check_counts, region_arg
from pipeline.cli.compress import cmd_compress
from pipeline.cli.decompress import cmd_decompress
from pipeline.cli.eval import cmd_eval
from pipeline.cli.info import cmd_info
from pipeline.cli.ls import LS_DOC, add_ls_arguments, cmd_ls


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="oml", description="Variable-rate learned image compression with online meta adaptation.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("compress", help="compress images (files or folders) to .oml files")
    p.add_argument("inputs", nargs="+", metavar="IMAGE", help="image files (PNG, JPEG, WebP, TIFF) or folders")
    p.add_argument("-o", "--output", required=True, help="output file (one input) or folder; an existing .oml file there is replaced, an input never")
    add_coding_arguments(p)
    p.set_defaults(func=cmd_compress)

    p = sub.add_parser("decompress", help="restore .oml files to PNG",
                       description="Restore .oml files to PNG. Into a folder, an existing file at an output's name is left as it is "
                       "unless it already holds exactly the restored bytes (a repeated run changes nothing); any other is reported "
                       "(exit 1), or replaced with --overwrite. A single output file that -o names is replaced. An input is never an output.")
    p.add_argument("inputs", nargs="+", metavar="FILE", help=".oml files or folders")
    p.add_argument("-o", "--output", required=True, help="output PNG (one input) or folder")
    p.add_argument("--overwrite", action="store_true", help="replace existing files in the output folder that hold other bytes (never an input)")
    p.add_argument("--metric", choices=(PLAIN, *METRICS), help="which stored λ* set to decode with (default: the first)")
    p.add_argument("--weights", help="local oml weights file instead of the model's default source")
    p.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS, help="refuse larger images (forged headers)")
    p.add_argument("--region", type=region_arg, metavar="LEFT,TOP,WIDTH,HEIGHT", help="restore only this window of one image (decodes only the tiles it overlaps)")
    p.set_defaults(func=cmd_decompress)

    p = sub.add_parser("eval", help="rate-distortion curves on a folder of images against classical codecs (JPEG, WebP, AVIF, HEVC, JPEG XL)")
    p.add_argument("inputs", metavar="FOLDER", help="folder of images (e.g. ../shared/data/kodak)")
    p.add_argument("-o", "--output", required=True, help="folder for rd.json and rd.png")
    p.add_argument("--model", default=DEFAULT_MODEL, choices=MODEL_IDS)
    p.add_argument("--weights", help="local oml weights file")
    p.add_argument("--quality", "-q", type=int, nargs="+", help="qualities to code (default: every quality of the model's first group, 1-6 for oml-default)")
    p.add_argument("--effort", nargs="+", choices=EFFORTS, help="encoder efforts, one curve each (as oml compress --effort)")
    p.add_argument("--steps", type=int, nargs="+", help="iterations of the paper's adaptation search, one curve per value (default 0 when no --effort is given)")
    p.add_argument("--refine", type=int, nargs="+", metavar="N", help="latent-refinement iterations, one curve per value and --steps value (default 0)")
    p.add_argument("--metric", default="psnr", choices=METRICS, help="adaptation target")
    p.add_argument("--baselines", nargs="*", default=list(STRONGEST_ANCHORS), choices=ANCHORS, metavar="CODEC",
                   help=f"classical anchors, one curve each (default: {' '.join(STRONGEST_ANCHORS)}; also {' '.join(c for c in ANCHORS if c not in STRONGEST_ANCHORS)}); "
                   "one whose plugin is missing is skipped with a note")
    p.add_argument("--baselines-from", metavar="RD_JSON",
                   help="take the anchors' points from an earlier rd.json of the same images (written with --per-image) instead of "
                   "encoding them again; an anchor it lacks, or recorded with other settings or library versions, is encoded")
    p.add_argument("--per-image", action="store_true", help="also store every image's numbers in rd.json")
    p.add_argument("--limit", type=int, default=0, help="use only the first N images")
    p.set_defaults(func=cmd_eval)


    p = sub.add_parser("archive", help="archive a collection (folder or s3://) on Ray, in units of tiles; same as jobs/compress.py",
                       description=ARCHIVE_DOC, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_archive_arguments(p)
    p.set_defaults(func=lambda a: run_archive(a, "oml archive"))

    p = sub.add_parser("restore", help="restore an archive (or one image, or a window of it) on Ray; same as jobs/decompress.py",
                       description=RESTORE_DOC, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_restore_arguments(p)
    p.set_defaults(func=lambda a: run_restore(a, "oml restore"))

    p = sub.add_parser("ls", help="list an archive's images with their metadata and sidecars", description=LS_DOC,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    add_ls_arguments(p)
    p.set_defaults(func=cmd_ls)

    p = sub.add_parser("info", help="describe .oml files")
    p.add_argument("inputs", nargs="+", metavar="FILE")
    p.add_argument("--tiles", action="store_true", help="list every tile with its bytes and λ*")
    p.set_defaults(func=cmd_info)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        check_counts(args)
        return args.func(args)
    except (UserError, ModelUnavailableError, ValueError) as exc:
        print(f"oml: error: {exc}", file=sys.stderr)
        return 2
    except StoppedError as exc:
        print(f"oml: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("oml: interrupted", file=sys.stderr)
        return 130
