"""Local folder listing shared by the ``oml`` command and the archive jobs (no fsspec)."""

from __future__ import annotations

import os
import posixpath
import stat
from collections import Counter
from collections.abc import Sequence
from typing import NamedTuple


class Unlisted(NamedTuple):
    """What a listing could not read: a folder (its files are not in the listing), a wanted file that
    cannot be looked at, or a broken link; its ``/``-separated path relative to the listed root (a
    folder's ends in ``/``) and why, in one line."""

    path: str
    reason: str


def walk_files(root: str, suffixes: tuple[str, ...], unlisted: list[Unlisted] | None = None) -> list[tuple[str, str]]:
    """(path as spelled from ``root``, ``/``-separated path relative to ``root``) of every file under ``root``
    whose name ends in one of ``suffixes`` (lower case), sorted by relative path.

    Symbolic links to files and folders are followed; each real folder is visited once, so a
    link loop ends. What cannot be listed is never left out without a word: a folder under
    ``root`` that cannot be read, a wanted file that cannot be looked at, and a broken link whose
    name ends in one of ``suffixes`` or has no suffix (a link to a folder, say on a drive not
    mounted) are appended to ``unlisted`` and the walk goes on; without ``unlisted`` the first of
    them raises. ``root`` itself unreadable always raises.

    Raises:
        OSError: ``root`` cannot be listed, or (without ``unlisted``) something under it.
    """

    def refuse(path: str, reason: str) -> None:
        if unlisted is None:
            raise OSError(f"{os.path.join(root, path)}: {reason}")
        unlisted.append(Unlisted(path, reason))

    def failed(error: OSError) -> None:
        folder = error.filename if isinstance(error.filename, str) else root
        if os.path.abspath(folder) == os.path.abspath(root):
            raise error
        rel = os.path.relpath(folder, root).replace(os.sep, "/") + "/"
        refuse(rel, f"cannot list this folder ({type(error).__name__}: {error.strerror or error}); its files are not in the listing")

    found, seen = [], set()
    for folder, subfolders, names in os.walk(root, onerror=failed, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen:
            subfolders[:] = []
            continue
        seen.add(real)
        for name in names:
            path = os.path.join(folder, name)
            if not name.lower().endswith(suffixes) and not (os.path.splitext(name)[1] == "" and os.path.islink(path)):
                continue  # not wanted; a link without a suffix may be a folder's, so its target is checked
            rel = os.path.relpath(path, root).replace(os.sep, "/")
            try:
                mode = os.stat(path).st_mode
            except FileNotFoundError:  # a broken link (or a file deleted since the folder was read)
                if os.path.islink(path):
                    refuse(rel, f"broken symbolic link (its target {os.readlink(path)} does not exist)")
                continue
            except OSError as exc:  # e.g. a folder that can be read but not entered
                refuse(rel, f"cannot read ({type(exc).__name__}: {exc.strerror or exc})")
                continue
            if stat.S_ISREG(mode) and name.lower().endswith(suffixes):
                found.append((path, rel))
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
