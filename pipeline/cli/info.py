"""``oml info``: what a ``.oml`` file holds."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


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
