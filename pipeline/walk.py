"""Local folder listing shared by the ``oml`` command and the archive jobs (no fsspec)."""

from __future__ import annotations

import os


def walk_files(root: str, suffixes: tuple[str, ...]) -> list[tuple[str, str]]:
    """(path as spelled from ``root``, ``/``-separated path relative to ``root``) of every file under ``root``
    whose name ends in one of ``suffixes`` (lower case), sorted by relative path.

    Symbolic links to files and folders are followed; each real folder is visited once, so a
    link loop ends; broken links are left out.
    """
    found, seen = [], set()
    for folder, subfolders, names in os.walk(root, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen:
            subfolders[:] = []
            continue
        seen.add(real)
        for name in names:
            path = os.path.join(folder, name)
            if name.lower().endswith(suffixes) and os.path.isfile(path):
                found.append((path, os.path.relpath(path, root).replace(os.sep, "/")))
    return sorted(found, key=lambda f: f[1])
