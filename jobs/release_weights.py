"""Record a new release of the default model's weights in the manifest (oml/weights/manifest.json).

    git mv oml/weights/oml-default.pt weights/oml-default-v11.pt      # the previous release leaves the wheel (with its base, if an overlay)
    cp runs/gpu/oml-default-gpu-meta.pt oml/weights/oml-default.pt    # or an overlay (jobs/overlay_weights.py)
    python jobs/release_weights.py v12

The new file (``oml/weights/<model>.pt``) gets its entry: SHA-256, size, the weights fingerprints
that files coded with it will carry (one per byte format), the base release of an overlay, and the
URL it is published at (the manifest's ``url`` + ``<model>-<version>.pt``, when the manifest names
one; otherwise downloads go through ``OML_WEIGHTS_URL``); it becomes the current
release. Every earlier release must still be in ``oml/weights/`` or ``weights/``, where it is found
by SHA-256 and its file name is brought up to date. The wheel carries ``oml/weights/`` only: the
current release and, for an overlay, its base (docs/MODELS.md, "How a weights file is found").
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

from oml.names import DEFAULT_MODEL, ModelUnavailableError

ROOT = Path(__file__).resolve().parents[1]


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def release(version: str, manifest_path: Path, folders: list[Path], model: str = DEFAULT_MODEL) -> dict:
    """Add ``version`` (the file ``<model>.pt`` beside the manifest) to the manifest and make it
    current; returns its entry. Raises ValueError when the release cannot be recorded."""
    from oml.models import weights
    from oml.models.zoo import load_model

    data = json.loads(manifest_path.read_text())
    entry = data["models"].setdefault(model, {"current": version, "releases": []})
    releases = entry["releases"]
    new = manifest_path.parent / f"{model}.pt"
    if not new.is_file():
        raise ValueError(f"{new} does not exist: put the new release there")
    if any(r["version"] == version for r in releases):
        raise ValueError(f"{model} {version} is already released")
    sha = _sha256(new)
    by_sha = {_sha256(p): p for folder in [manifest_path.parent, *folders] for p in sorted(folder.glob("*.pt")) if p != new}
    for old in releases:
        if old["sha256"] == sha:
            raise ValueError(f"{new} is {model} {old['version']}, already released")
        if old["sha256"] not in by_sha:
            raise ValueError(f"{model} {old['version']} ({old['file']}) is in none of {manifest_path.parent}, {', '.join(map(str, folders))}: keep every release")
        old["file"] = by_sha[old["sha256"]].name
    stored = weights.read_stored(new)
    base = None
    if stored.get("format") == weights.OVERLAY_FORMAT:
        base = next((r["version"] for r in releases if r["sha256"] == stored["base"]["sha256"]), None)
        if base is None:
            raise ValueError(f"{new} is an overlay of {stored['base']['name']}, which is no release")
    decoder = load_model(model, weights=new)
    quality = min(decoder.lambdas)
    added = {
        "version": version,
        "file": new.name,
        "sha256": sha,
        "size": new.stat().st_size,
        "url": f"{data['url']}{model}-{version}.pt" if data["url"] else "",
        "fingerprints": {str(v): decoder.fingerprint(quality, v).hex() for v in (1, 2)},
    }
    if base is not None:
        added["base"] = base
    releases.append(added)
    entry["current"] = version
    weights.Manifest(data, str(manifest_path))  # what is written must read back
    partial = manifest_path.with_name(f".{manifest_path.name}.partial")
    partial.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
    partial.replace(manifest_path)
    return added


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("version", help="the new release's version, e.g. v11")
    parser.add_argument("--manifest", type=Path, default=ROOT / "oml" / "weights" / "manifest.json", help="manifest to update (default: the package's)")
    parser.add_argument("--older", type=Path, action="append", help="folder of earlier releases (default: the repository's weights/)")
    args = parser.parse_args(argv)
    try:
        added = release(args.version, args.manifest, args.older or [ROOT / "weights"])
    except (OSError, ValueError, KeyError, ModelUnavailableError) as exc:
        print(f"release_weights: {exc}", file=sys.stderr)
        return 2
    print(f"{args.manifest}: {DEFAULT_MODEL} {added['version']} = {added['file']}, sha256 {added['sha256'][:16]}…, fingerprint {added['fingerprints']['2']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
