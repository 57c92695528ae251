"""What the single-file commands share: the files their inputs name, the outputs' names, writing an
output without ever replacing an input, and running one job per file with a progress bar."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from tqdm import tqdm

from pipeline.cli.args import StoppedError, UserError
from pipeline.files import describe, identity, out_of_room, remove_stale, write_file
from pipeline.walk import Unlisted, output_names, walk_files


def expand_inputs(inputs: Sequence[str], suffixes: tuple[str, ...], unlisted: list[str]) -> list[Path]:
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


def output_paths(files: list[Path], inputs: Sequence[str], out: str, suffix: str) -> list[Path]:
    """One output path per input: ``out`` itself for a single file, else ``out/<relative name><suffix>``."""
    if not out:
        raise UserError("-o/--output is empty (''): name an output file or folder")
    target = Path(out)
    if single_output(files, inputs, out):
        return not_inputs([target], files)
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
    return not_inputs([target / names[r] for r in rels], files)


def single_output(files: list[Path], inputs: Sequence[str], out: str) -> bool:
    """Whether ``-o`` names the one output file itself (one input file, and ``out`` no folder)."""
    return len(files) == 1 and not Path(inputs[0]).is_dir() and not Path(out).is_dir()


def not_inputs(paths: list[Path], files: list[Path]) -> list[Path]:
    """``paths``, unless one is an input, however spelled (a link, a hard link, a bind mount: the
    same device and inode); then UserError."""
    sources = {identity(str(f)) for f in files} - {None}
    for path in paths:
        if identity(str(path)) in sources:
            raise UserError(f"{path} is also an input: writing it would destroy the original; choose another output")
    return paths


def write_output(path: Path, data: bytes, replace: bool = True) -> bool:
    """Write ``path`` through a short temporary beside it, never left behind (:mod:`pipeline.files`);
    with ``replace=False`` a different existing file is left as it is (ExistingFileError) and one
    holding ``data`` already is not written again (``False``)."""
    return write_file(str(path), data, replace)


def clean_outputs(outs: list[Path]) -> None:
    """Remove the temporaries a killed run left beside these outputs."""
    for folder in sorted({str(p.parent) for p in outs}):
        remove_stale(folder)


def run_each(items: list[tuple[Path, Path]], work: Callable[[Path, Path], str], desc: str) -> int:
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
