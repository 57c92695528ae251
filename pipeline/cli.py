"""The ``oml`` command: compress, decompress and inspect images on local disk.

    oml compress photo.png -o photo.oml --quality 3 --steps 20
    oml compress photos/ -o archive/            # every image in the folder
    oml decompress archive/*.oml -o restored/
    oml decompress scan.oml -o window.png --region 4096,2048,512,512   # decodes only the tiles it overlaps
    oml info photo.oml
    oml archive --input photos/ --output archive/ --steps 5       # a collection on Ray (local or a cluster)
    oml restore --input archive/ --output restored/
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import warnings

# CompressAI's import triggers a torch deprecation warning that means nothing to a user.
warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*", category=FutureWarning)
from collections.abc import Callable, Sequence
from pathlib import Path

from tqdm import tqdm

from oml.names import ANCHORS, CODED_SUFFIX, DEFAULT_EFFORT, DEFAULT_MAX_PIXELS, DEFAULT_MODEL, EFFORTS, IMAGE_SUFFIXES, METRICS, MODEL_IDS, PLAIN, STRONGEST_ANCHORS, TILE, ModelUnavailableError
from pipeline.files import describe, identity, out_of_room, remove_stale, write_file
from pipeline.walk import Unlisted, output_names, walk_files

# torch, CompressAI and the codec load only when a command runs: --help and argument errors answer at once.


class UserError(Exception):
    """A mistake in the command line: reported as one line, exit status 2."""


class StoppedError(Exception):
    """The run cannot go on (the output's file system is full or read-only): one line, exit status 1."""


def number_arg(low: float, above: bool = False) -> Callable[[str], float]:
    """An argparse type: a finite number ``>= low`` (``> low`` with ``above``). NaN, which no
    comparison rejects, and infinities are refused here, in one line (exit 2)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not math.isfinite(value) or value < low or (above and value == low):
            raise argparse.ArgumentTypeError(f"{text!r}: give a finite number {'>' if above else '>='} {low:g}")
        return value

    return parse


positive_number = number_arg(0.0, above=True)  # one object per kind: the flags of `oml compress` and `oml archive` compare equal
non_negative_number = number_arg(0.0)


def region_arg(text: str) -> tuple[int, int, int, int]:
    """``--region LEFT,TOP,WIDTH,HEIGHT`` (pixels) as a tuple; argparse reports a malformed one."""
    parts = text.split(",")
    try:
        left, top, width, height = (int(p) for p in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not LEFT,TOP,WIDTH,HEIGHT (four integers, in pixels)") from None
    if left < 0 or top < 0 or width < 1 or height < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: LEFT and TOP must be >= 0, WIDTH and HEIGHT >= 1")
    return left, top, width, height


def _expand(inputs: Sequence[str], suffixes: tuple[str, ...], unlisted: list[str]) -> list[Path]:
    """The files the inputs name, folders walked; what a walk cannot list (a folder that cannot be
    read, a broken link: :func:`pipeline.walk.walk_files`) is reported, one ``error:`` line each,
    and appended to ``unlisted`` (the command then exits 1), and the rest goes on."""
    files: list[Path] = []
    for name in inputs:
        if not name:
            raise UserError("an input is empty (''): name a file or folder")
        path = Path(name)
        if path.is_dir():
            missed: list[Unlisted] = []
            try:
                files += [Path(p) for p, _ in walk_files(str(path), suffixes, missed)]
            except OSError as exc:  # the folder itself cannot be listed
                missed.append(Unlisted("", f"cannot list this folder ({type(exc).__name__}: {exc.strerror or exc})"))
            for u in missed:
                where = os.path.join(name, u.path) if u.path else name
                print(f"error: {where}: {u.reason}", file=sys.stderr)
                unlisted.append(where)
        elif path.exists():
            files.append(path)
        else:
            raise UserError(f"{name}: no such file or directory")
    if not files:
        raise UserError(f"no input files found (looked for {', '.join(suffixes)})")
    return files


def _outputs(files: list[Path], inputs: Sequence[str], out: str, suffix: str) -> list[Path]:
    """One output path per input: ``out`` itself for a single file, else ``out/<relative name><suffix>``."""
    if not out:
        raise UserError("-o/--output is empty (''): name an output file or folder")
    target = Path(out)
    if _single(files, inputs, out):
        return _not_inputs([target], files)
    if target.exists() and not target.is_dir():
        raise UserError(f"{out} must be a folder when there are several inputs")
    roots = [Path(i) for i in inputs if Path(i).is_dir()]
    rels = []
    for f in files:
        root = next((r for r in roots if r in f.parents), None)
        rels.append((f.relative_to(root) if root else Path(f.name)).as_posix())
    if len(set(rels)) != len(rels):  # the same file named twice, or two roots holding one name
        twice = next(r for r in rels if rels.count(r) > 1)
        raise UserError(f"two inputs are both called {twice}: give them distinct names or one folder")
    names = output_names(rels, suffix)  # a.png and a.jpg become a.png.oml and a.jpg.oml
    return _not_inputs([target / names[r] for r in rels], files)


def _single(files: list[Path], inputs: Sequence[str], out: str) -> bool:
    """Whether ``-o`` names the one output file itself (one input file, and ``out`` no folder)."""
    return len(files) == 1 and not Path(inputs[0]).is_dir() and not Path(out).is_dir()


def _not_inputs(paths: list[Path], files: list[Path]) -> list[Path]:
    """``paths``, unless one is an input, however spelled (a link, a hard link, a bind mount: the
    same device and inode); then UserError."""
    sources = {identity(str(f)) for f in files} - {None}
    for path in paths:
        if identity(str(path)) in sources:
            raise UserError(f"{path} is also an input: writing it would destroy the original; choose another output")
    return paths


def _write(path: Path, data: bytes, replace: bool = True) -> bool:
    """Write ``path`` through a short temporary beside it, never left behind (:mod:`pipeline.files`);
    with ``replace=False`` a different existing file is left as it is (ExistingFileError) and one
    holding ``data`` already is not written again (``False``)."""
    return write_file(str(path), data, replace)


def _clean(outs: list[Path]) -> None:
    """Remove the temporaries a killed run left beside these outputs."""
    for folder in sorted({str(p.parent) for p in outs}):
        remove_stale(folder)


def _run_each(items: list[tuple[Path, Path]], work: Callable[[Path, Path], str], desc: str) -> int:
    """Apply ``work`` to each (input, output); report failures one line each, keep going."""
    from oml import codec
    from oml.imageio import ImageDecodeError

    failed = done = 0
    bar = tqdm(items, desc=desc, unit="img", disable=len(items) < 2, file=sys.stderr)
    for src, dst in bar:
        try:
            line = work(src, dst)
        except OSError as exc:
            if out_of_room(exc):  # every later write would fail the same way
                bar.close()
                raise StoppedError(f"{describe(exc)}; stopped after {done} of {len(items)} files, nothing partial left") from None
            failed += 1
            tqdm.write(f"error: {src}: {describe(exc)}", file=sys.stderr)
            continue
        except (ImageDecodeError, codec.CodecError, ValueError) as exc:
            failed += 1
            tqdm.write(f"error: {src}: {exc}", file=sys.stderr)
            continue
        done += 1
        tqdm.write(line)
    if failed:
        print(f"{failed} of {len(items)} files failed", file=sys.stderr)
    return 1 if failed else 0


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
    files = _expand(args.inputs, IMAGE_SUFFIXES, unlisted)
    outs = _outputs(files, args.inputs, args.output, CODED_SUFFIX)
    _clean(outs)
    quality = args.quality if args.quality is not None else 1
    model = load_model(args.model, quality if args.quality is not None else _first_quality(args.model), weights=args.weights)
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
        _write(dst, enc.data)
        h, w = image.shape[1:]
        psnr = ratecontrol.image_psnr(enc.reconstruction, image)
        return f"{src} -> {dst}: {w}x{h}, {len(enc.data)} bytes, {8 * len(enc.data) / (h * w):.4f} bpp, PSNR {psnr:.2f} dB{note}"

    return max(_run_each(list(zip(files, outs)), work, "compress"), 1 if unlisted else 0)


def _group(name: str) -> tuple[int, ...]:
    from oml.models.zoo import ZOO

    return ZOO[name].groups[0]


def _first_quality(name: str) -> int:
    return _group(name)[0] if name in MODEL_IDS else 1


def cmd_decompress(args: argparse.Namespace) -> int:
    from oml import codec, metadata, tiling
    from oml.imageio import encode_png
    from oml.models.zoo import load_decoder

    unlisted: list[str] = []
    files = _expand(args.inputs, (CODED_SUFFIX,), unlisted)
    if args.region is not None and len(files) != 1:
        raise UserError(f"--region restores a window of one image; {len(files)} .oml files were given")
    outs = _outputs(files, args.inputs, args.output, ".png")
    _clean(outs)
    replace = args.overwrite or _single(files, args.inputs, args.output)  # a file -o names itself is replaced
    models: dict[tuple[str, int, bytes, int], object] = {}

    def work(src: Path, dst: Path) -> str:
        data = src.read_bytes()
        header = codec.read_header(data)
        quality = header.quality or _first_quality(header.model)
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
        wrote = _write(dst, metadata.write_png(encode_png(image), blocks), replace)  # the source's metadata, back as it was
        window = "" if args.region is None else " window {},{} {}x{} of".format(*args.region)
        return f"{src} -> {dst}:{window} {header.width}x{header.height}{'' if wrote else ' (already there, the same bytes)'}"

    return max(_run_each(list(zip(files, outs)), work, "decompress"), 1 if unlisted else 0)


def cmd_info(args: argparse.Namespace) -> int:
    from oml import codec, tiling

    failed = 0
    for name in args.inputs:
        path = Path(name)
        try:
            data = path.read_bytes()
            header, records = codec.read(data)
        except (OSError, codec.CodecError) as exc:
            print(f"error: {name}: {exc}", file=sys.stderr)
            failed += 1
            continue
        pixels = header.width * header.height
        quality = f"quality {header.quality}" if header.quality else "continuous λ"
        print(f"{name}: {header.width}x{header.height}, model {header.model} (weights {header.fingerprint.hex()}), "
              f"{quality}, λ_t={header.lmbda:.5g}, format v{header.version}")
        print(f"  {len(data)} bytes, {8 * len(data) / pixels:.4f} bpp, {header.num_tiles} tiles of at most {header.tile}px, "
              f"K={header.num_lambdas}, λ* sets: {', '.join(header.metrics)}")
        print(f"  {_portability(header.version)}")
        if header.source is not None:
            for line in _source_lines(header.source):
                print(f"  {line}")
        if args.tiles:
            grid = tiling.tile_grid(header.height, header.width, header.tile)
            for tile, rec in zip(grid, records):
                lam = "; ".join(f"{m}: " + " ".join(f"{v:.5g}" for v in rec.lambdas[i].tolist()) for i, m in enumerate(header.metrics))
                print(f"  tile ({tile.top},{tile.left}) {tile.width}x{tile.height}: {sum(map(len, rec.strings))} bytes; λ* {lam}")
    return 1 if failed else 0


def _source_lines(source) -> list[str]:
    from datetime import datetime, timezone

    from oml import metadata

    when = "unknown" if source.mtime is None else datetime.fromtimestamp(source.mtime, timezone.utc).isoformat(timespec="seconds")
    depth = f"{source.bits}-bit {source.sample_format or 'unknown'}"
    lines = [f"source {source.name}: {source.format}, {depth} samples, {source.size} bytes, modified {when}, sha256 {source.sha256.hex()}",
             f"metadata: {metadata.summary(source.blocks)}"]
    if source.cut:
        lines.append(f"metadata left out (over the size limit): {', '.join(source.cut)}")
    return lines


def _portability(version: int) -> str:
    if version >= 2:
        return "portable: exact integer entropy decoding, symbols checked per tile (CRC-32)"
    return "not portable: format 1 decodes its symbols with float arithmetic and has no symbol check; re-encode to format 2"


def cmd_eval(args: argparse.Namespace) -> int:
    from pipeline.evaluate import EvalConfig, run_eval

    cfg = EvalConfig(
        inputs=args.inputs, output=args.output, model=args.model, weights=args.weights,
        qualities=tuple(args.quality or _group(args.model)), efforts=tuple(args.effort or ()),
        steps=tuple(args.steps or ([] if args.effort and args.refine is None else [0])), refine=tuple(args.refine or [0]), metric=args.metric,
        baselines=tuple(args.baselines), per_image=args.per_image, limit=args.limit,
    )
    result = run_eval(cfg)
    for name, pts in result["curves"].items():
        print(f"{name}: " + ", ".join(f"{p['bpp']:.3f} bpp/{p['psnr']:.2f} dB" for p in pts))
    ranges = result["bd_rate_psnr_range_db"]
    for key, value in result["bd_rate_percent"].items():
        span = f" (over {ranges[key][0]:.2f}-{ranges[key][1]:.2f} dB)" if ranges.get(key) else ""
        print(f"BD-rate {key}: {value if isinstance(value, str) else f'{value:+.2f}%'}{span}")
    for name, settings in result["anchors"].items():
        print(f"anchor {name}: {settings['format']} {settings['options']} " + " ".join(f"{k} {v}" for k, v in settings["versions"].items()))
    print(f"wrote {args.output}/rd.json and {args.output}/rd.png")
    return 0


def add_coding_arguments(p: argparse.ArgumentParser) -> None:
    """The coding flags: ``oml compress`` and ``oml archive`` (``jobs/compress.py``) both take exactly these."""
    rate = p.add_mutually_exclusive_group()
    rate.add_argument("--quality", "-q", type=int, help="quality (default 3); see the model's groups")
    rate.add_argument("--lmbda", type=positive_number, help="rate-distortion trade-off λ (λ-conditioned models take any value in range)")
    rate.add_argument("--target-psnr", type=positive_number, metavar="DB", help="per image, the λ whose file decodes closest to this PSNR (within 0.1 dB)")
    rate.add_argument("--target-bpp", type=positive_number, metavar="BPP", help="per image, the λ whose file is closest to this size in bits per pixel (within 3 %%)")
    p.add_argument("--model", default=DEFAULT_MODEL, choices=MODEL_IDS, help=f"model id (default {DEFAULT_MODEL})")
    p.add_argument("--weights", help="local oml weights file instead of the model's default source (on every node, for the archive)")
    p.add_argument("--effort", default=DEFAULT_EFFORT, choices=EFFORTS,
                   help=f"encoder effort (default {DEFAULT_EFFORT}): fast = no adaptation, default = quick online adaptation, "
                   "archival = quick adaptation and 400 latent-refinement iterations per tile; --steps and --refine override it")
    p.add_argument("--steps", type=int, help="iterations of the paper's online-adaptation search per tile instead of the effort's adaptation (0: none; at most 200)")
    p.add_argument("--metric", nargs="+", default=["psnr"], choices=METRICS, help="adapt for these metrics; one λ* set each")
    p.add_argument("--refine", type=int, metavar="N", help="latent-refinement iterations per tile, for the first metric, instead of the effort's (0: none, at most 2000; slower encoding, same decoder)")
    p.add_argument("--tile", type=int, default=TILE, help="tile size in pixels (multiple of 64, default 512)")
    p.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS, help="refuse larger images (decompression bombs)")
    p.add_argument("--to-srgb", action="store_true", help="convert images whose colour profile (ICC) is not sRGB to sRGB (relative colorimetric); without it the pixels are coded as stored and the profile kept with them")
    p.add_argument("--metadata-limit", type=int, metavar="BYTES", help="metadata blocks kept per image (EXIF, ICC, XMP, IPTC, PNG text; default 1000000); an image over it is named")


# Iterations per tile a command accepts: adaptation's gain saturates by about 20 steps and
# refinement's by a few hundred (docs/RESULTS.md), and each costs a multiple of the plain encode
# time, so a larger count is a typo, not a wish (10^9 would run for years).
MAX_COUNTS = {"steps": 200, "refine": 2000}


def check_counts(args: argparse.Namespace) -> None:
    """UserError unless ``--steps`` and ``--refine`` (one value or a list) are within 0..MAX_COUNTS; then,
    for a coding command, fills ``steps``, ``refine`` and ``quick`` from ``--effort`` where not given."""
    for flag, most in MAX_COUNTS.items():
        values = getattr(args, flag, None)
        values = [v for v in (values if isinstance(values, list) else [values]) if v is not None]
        if any(n < 0 for n in values):
            raise UserError(f"--{flag} must be 0 or more")
        if any(n > most for n in values):
            raise UserError(f"--{flag} must be at most {most} iterations per tile")
    if isinstance(getattr(args, "effort", None), str):
        from oml.effort import coding_effort

        effort = coding_effort(args.effort, tuple(args.metric), args.steps, args.refine)
        args.steps, args.refine, args.quick = effort.adapt.steps, effort.refine.iterations, effort.adapt.quick


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

    p = sub.add_parser("eval", help="rate-distortion on a folder of images against JPEG, WebP and AVIF")
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
    p.add_argument("--per-image", action="store_true", help="also store every image's numbers in rd.json")
    p.add_argument("--limit", type=int, default=0, help="use only the first N images")
    p.set_defaults(func=cmd_eval)

    from pipeline.archive_cli import ARCHIVE_DOC, RESTORE_DOC, add_archive_arguments, add_restore_arguments, run_archive, run_restore

    p = sub.add_parser("archive", help="archive a collection (folder or s3://) on Ray, in units of tiles; same as jobs/compress.py",
                       description=ARCHIVE_DOC, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_archive_arguments(p)
    p.set_defaults(func=lambda a: run_archive(a, "oml archive"))

    p = sub.add_parser("restore", help="restore an archive (or one image, or a window of it) on Ray; same as jobs/decompress.py",
                       description=RESTORE_DOC, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_restore_arguments(p)
    p.set_defaults(func=lambda a: run_restore(a, "oml restore"))

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


if __name__ == "__main__":
    raise SystemExit(main())
