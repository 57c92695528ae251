"""An archive's own decoder: the weights file of every model version that coded it, stored once
under ``models/<sha256>.pt`` (content-addressed: a file's name is the SHA-256 of its bytes).

``oml archive`` copies there the released weights file its model was loaded from (and, for an
overlay release, the whole file it is made over), found by the weights fingerprint in the package's
manifest (:mod:`oml.models.weights`). ``oml restore`` adds the folder to the weights path, after
the package's own folder, so that an archive restores where the installed package lacks that
version; a file found there is loaded like any release: its size and SHA-256 checked against the
manifest, read with ``weights_only=True``. A remote archive's copies are fetched into a local
folder first (checked the same way). Random test weights have no file: nothing is stored.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from oml.models import weights as released
from pipeline import storage

FOLDER = "models"


def folder_uri(root: str) -> str:
    return storage.join(root, FOLDER)


def releases_of(model: str, fingerprint: bytes) -> list[released.Release]:
    """The release that coded with ``fingerprint`` (byte format 2) and, for an overlay, its base."""
    found = released.manifest().find(model, fingerprint, 2)
    if found is None:
        return []
    chain = [found]
    while chain[-1].base is not None:
        chain.append(released.manifest().release(model, chain[-1].base))
    return chain


def store(root: str, model: str, fingerprint: bytes) -> dict[str, dict[str, str]]:
    """Copy the weights files of the model version that coded with ``fingerprint`` into the
    archive's ``models/`` (each once: a file already there under its SHA-256 is left as it is).
    Returns ``{sha256: {"model", "version", "file"}}`` of what the archive holds for it."""
    stored = {}
    for release in releases_of(model, fingerprint):
        target = storage.join(folder_uri(root), f"{release.sha256}.pt")
        if not (storage.exists(target) and storage.size(target) == release.size):
            path = released.locate(release)  # the copy the coding model was loaded from, checked by SHA-256
            storage.write_bytes(target, path.read_bytes())
        stored[release.sha256] = {"model": release.model, "version": release.version, "file": release.file}
    return stored


def local_folder(root: str) -> Path | None:
    """A local folder holding the archive's ``models/`` copies: the folder itself for a local
    archive, else a temporary copy of its files (``None`` when it has none)."""
    uri = folder_uri(root)
    if storage.is_local(uri):
        return Path(uri) if os.path.isdir(uri) else None
    try:
        names = storage.glob(storage.join(uri, "*.pt"))
    except OSError:
        return None
    if not names:
        return None
    local = Path(tempfile.mkdtemp(prefix="oml-archive-models-"))
    for name in names:
        (local / name.rsplit("/", 1)[-1]).write_bytes(storage.read_bytes(name))
    return local
