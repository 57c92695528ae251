"""Local folder listing shared by the ``oml`` command and the archive jobs (no fsspec)."""

from __future__ import annotations

import os
import posixpath
from collections import Counter
from collections.abc import Sequence


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


def output_names(paths: Sequence[str], suffix: str) -> dict[str, str]:
    """Output name per ``/``-separated input path, all distinct: the input's suffix becomes
    ``suffix``; inputs that would collide keep theirs (``a.jpg`` → ``a.jpg.png``), and any name
    still taken gets a counter (``a.png.2.png``), in sorted order, so the names are the same on
    every run whatever order the inputs came in. Names are compared case-sensitively."""
    names = {p: posixpath.splitext(p)[0] + suffix for p in paths}
    uses = Counter(names.values())
    names = {p: (p + suffix if uses[n] > 1 else n) for p, n in names.items()}
    taken: set[str] = set()
    for p in sorted(names, key=lambda q: (names[q], q)):
        name, i = names[p], 1
        while name in taken:
            i += 1
            name = posixpath.splitext(names[p])[0] + f".{i}{suffix}"
        names[p] = name
        taken.add(name)
    return names
