"""``oml ls ARCHIVE``: the images an archive holds, one line each, with their metadata and sidecars."""

from __future__ import annotations

import argparse
import json
import sys

LS_DOC = """List the images of an archive made by `oml archive` (a folder or s3://bucket/prefix), in order:
key, path, size, source format and bytes, metadata blocks and sidecar files (WebDataset inputs).

    oml ls archive/
    oml ls s3://bucket/archive --json | jq .key

Images a missing or damaged unit leaves unreadable are named on stderr, with why.
Exit status: 0 every image readable, 1 some are not (or storage failed), 2 not an archive / bad arguments.
"""


def add_ls_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("archive", metavar="ARCHIVE", help="archive folder or s3://bucket/prefix")
    p.add_argument("--json", action="store_true", help="one JSON object per image (metadata and sidecars as sizes; the JSON sidecar inline)")


def _sizes(blocks: dict[str, bytes] | tuple[tuple[str, bytes], ...]) -> str:
    items = blocks.items() if isinstance(blocks, dict) else blocks
    return ",".join(f"{k}:{len(v)}" for k, v in items) or "-"


def _json_line(entry) -> str:
    out = {
        "key": entry.key, "path": entry.path, "width": entry.width, "height": entry.height, "source": entry.source,
        "source_bytes": entry.source_bytes, "source_sha256": entry.source_sha256, "source_format": entry.source_format,
        "source_mtime": entry.source_mtime, "num_tiles": entry.num_tiles,
        "metadata": {k: len(v) for k, v in entry.metadata}, "metadata_cut": list(entry.metadata_cut),
        "sidecars": {k: len(v) for k, v in entry.sidecars.items()},
    }
    if "json" in entry.sidecars:
        try:
            out["json"] = json.loads(entry.sidecars["json"])
        except ValueError:
            pass
    return json.dumps(out, sort_keys=True)


def cmd_ls(args: argparse.Namespace, prog: str = "oml ls") -> int:
    from pipeline.archive.reader import open_archive
    from pipeline.storage import explain, unreachable_errors

    try:
        archive = open_archive(args.archive)
    except ValueError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    except unreachable_errors() as exc:
        print(f"{prog}: error: {explain(exc)}", file=sys.stderr)
        return 1
    for note in archive.notes:
        print(f"note: {note}", file=sys.stderr)
    for e in archive:
        if args.json:
            print(_json_line(e))
        else:
            print(f"{e.key}\t{e.path}\t{e.width}x{e.height}\t{e.source_format or '?'}\t{e.source_bytes}\t"
                  f"metadata {_sizes(e.metadata)}\tsidecars {_sizes(e.sidecars)}")
    for path, why in archive.problems.items():
        print(f"{prog}: error: {path}: cannot be read: {why}", file=sys.stderr)
    if not args.json:
        print(f"{len(archive)} images readable, {len(archive.problems)} not, {len(archive.failed)} inputs never archived", file=sys.stderr)
    return 1 if archive.problems else 0
