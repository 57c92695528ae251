"""Local files written without loss: short temporary names, commits that never replace what they
must not, files and folders compared by identity, and OS errors said in words.

A writer puts its bytes under a temporary name beside the target and renames it into place only
once they are all on disk, so a reader sees the old file or the new one, never a part. The
temporary is ``.oml-<8 hex>.part``: 19 bytes whatever the target is called, so any target name
the file system takes has a temporary it takes too. It is removed whenever the write fails (a
full disk included), and a later run removes those a killed one left (:func:`remove_stale`).

Two spellings of one place (a symbolic link, a bind mount, ``a/../a``) are one place here: paths
are compared by device and inode, never as strings.

No fsspec: the ``oml`` command uses this module as it is; :mod:`pipeline.storage` builds on it.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import secrets
from collections.abc import Iterator
from contextlib import contextmanager

TEMPORARY = re.compile(r"\.oml-[0-9a-f]{8}\.part\Z|.+\.[0-9a-f]{8,32}\.tmp\Z")
"""Names of the temporaries writers make: ``.oml-<8 hex>.part`` (this module), and
``NAME.<hex>.tmp`` (earlier versions), which a killed run of those may have left."""

OUT_OF_ROOM = (errno.ENOSPC, errno.EDQUOT, errno.EROFS)
"""Errors after which no further write to that file system can succeed: a run stops at the first."""

_LOCAL = (*OUT_OF_ROOM, errno.EACCES, errno.EPERM, errno.ENAMETOOLONG, errno.ENOTDIR, errno.EISDIR, errno.EEXIST, errno.ENOENT)


class ExistingFileError(FileExistsError):
    """A write that must not replace found a different file (or a folder) where it would put its own."""

    def __init__(self, path: str) -> None:
        super().__init__(errno.EEXIST, "a different file is already there; left as it is (--overwrite replaces it)", path)

    def __str__(self) -> str:
        return f"{self.filename}: {self.strerror}"


def describe(exc: OSError) -> str:
    """``exc`` in one line, in words, naming its file: ``no space left on device: /out/a.png``."""
    if isinstance(exc, ExistingFileError):
        return str(exc)
    text = exc.strerror or str(exc)
    text = text[:1].lower() + text[1:]
    return f"{text}: {exc.filename}" if exc.filename else text


def is_local_failure(exc: BaseException) -> bool:
    """Whether ``exc`` is an error of a local file system that trying again will not mend (no space,
    read-only, permission, a name too long, a different file in the way)."""
    return isinstance(exc, OSError) and exc.errno in _LOCAL


def out_of_room(exc: BaseException) -> bool:
    """Whether ``exc`` says the file system takes no more writes (full, over quota, read-only)."""
    return isinstance(exc, OSError) and exc.errno in OUT_OF_ROOM


def temporary_path(path: str) -> str:
    """A fresh temporary name in ``path``'s folder (:data:`TEMPORARY`)."""
    return os.path.join(os.path.dirname(path), f".oml-{secrets.token_hex(4)}.part")


def remove_stale(folder: str) -> int:
    """Delete the temporaries (:data:`TEMPORARY`) that killed writers left in ``folder`` (not below
    it); the caller makes sure that no writer of its own is running there. Returns how many."""
    try:
        entries = list(os.scandir(folder))
    except (FileNotFoundError, NotADirectoryError):
        return 0
    removed = 0
    for entry in entries:
        if TEMPORARY.match(entry.name) and entry.is_file(follow_symlinks=False):
            try:
                os.remove(entry.path)
            except FileNotFoundError:
                continue
            removed += 1
    return removed


def identity(path: str) -> tuple[int, int] | None:
    """(device, inode) of the file or folder at ``path`` (through links), ``None`` when there is none."""
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return None
    return st.st_dev, st.st_ino


def same(a: str, b: str) -> bool:
    """Whether ``a`` and ``b`` are one existing file or folder, however each is spelled."""
    key = identity(a)
    return key is not None and key == identity(b)


class Place:
    """An existing file or folder known by identity: :meth:`holds` says whether a path is in it."""

    def __init__(self, key: tuple[int, int]) -> None:
        self.key = key
        self._folders: dict[str, bool] = {}

    @classmethod
    def of(cls, path: str) -> Place | None:
        """The place at ``path``, ``None`` when nothing is there."""
        key = identity(path)
        return None if key is None else cls(key)

    def holds(self, path: str) -> bool:
        """Whether ``path`` (existing or not) is this place or lies under it: it, or one of the
        folders above it, is this place, however spelled (folders' answers are remembered)."""
        path = os.path.abspath(path)
        if identity(path) == self.key:
            return True
        chain, folder = [], os.path.dirname(path)
        while folder not in self._folders:
            chain.append(folder)
            if identity(folder) == self.key:
                found = True
                break
            parent = os.path.dirname(folder)
            if parent == folder:
                found = False
                break
            folder = parent
        else:
            found = self._folders[folder]
        for f in chain:
            self._folders[f] = found
        return found


def holds_bytes(path: str, size: int, digest: bytes) -> bool:
    """Whether ``path`` is a file of ``size`` bytes whose SHA-256 is ``digest`` (read in pieces)."""
    try:
        if not os.path.isfile(path) or os.path.getsize(path) != size:
            return False
        sha = hashlib.sha256()
        with open(path, "rb") as f:
            while piece := f.read(8 << 20):
                sha.update(piece)
    except OSError:
        return False
    return sha.digest() == digest


class Writer:
    """A file written piece by piece under a temporary name beside ``path`` (:data:`TEMPORARY`),
    put at ``path`` by :meth:`commit`, never in part, and gone after :meth:`abort` or a failed
    commit. With ``replace=False`` the commit never replaces anything at ``path``: a file holding
    the very same bytes is left as it is (the write was done before), anything else raises
    :class:`ExistingFileError`. Errors name ``path``, not the temporary."""

    def __init__(self, path: str, replace: bool = True) -> None:
        self.path, self.replace = path, replace
        self.sha, self.size = hashlib.sha256(), 0
        self.tmp: str | None = None
        with self._naming():
            os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
            while self.tmp is None:
                tmp = temporary_path(path)
                try:
                    self.file = open(tmp, "xb")
                except FileExistsError:  # another writer's, by chance
                    continue
                self.tmp = tmp

    def write(self, data: bytes) -> None:
        with self._naming():
            self.file.write(data)
        self.sha.update(data)
        self.size += len(data)

    def commit(self) -> None:
        try:
            with self._naming():
                self.file.flush()
                os.fsync(self.file.fileno())
                self.file.close()
                self._place()
        finally:
            self.abort()  # the temporary, if still there

    def abort(self) -> None:
        try:
            self.file.close()  # a flush that fails again (a full disk) must not keep the temporary
        except OSError:
            pass
        finally:
            if self.tmp is not None:
                try:
                    os.remove(self.tmp)
                except FileNotFoundError:
                    pass
                self.tmp = None

    def _place(self) -> None:
        if self.replace:
            os.replace(self.tmp, self.path)
            return
        try:
            os.link(self.tmp, self.path)  # fails when anything is at path: nothing is ever replaced
        except FileExistsError:
            self._keep_existing()
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.EMLINK, errno.EXDEV):
                raise
            if os.path.lexists(self.path):  # a file system without hard links: check, then rename
                self._keep_existing()
            else:
                os.replace(self.tmp, self.path)

    def _keep_existing(self) -> None:
        if not holds_bytes(self.path, self.size, self.sha.digest()):
            raise ExistingFileError(self.path)

    @contextmanager
    def _naming(self) -> Iterator[None]:
        """OSErrors raised inside name the target (a full disk says which file did not fit)."""
        try:
            yield
        except ExistingFileError:
            raise
        except OSError as exc:
            if exc.errno is None or exc.filename == self.path:
                raise
            raise OSError(exc.errno, exc.strerror, self.path) from exc


def write_file(path: str, data: bytes, replace: bool = True) -> bool:
    """Write ``data`` to ``path`` through a :class:`Writer`. With ``replace=False``, a file that
    already holds ``data`` is left as it is (``False`` is returned: nothing written) and any
    other file there raises :class:`ExistingFileError` before anything is written."""
    if not replace and os.path.lexists(path):
        if holds_bytes(path, len(data), hashlib.sha256(data).digest()):
            return False
        raise ExistingFileError(path)
    write_through(Writer(path, replace), data)
    return True


def write_through(writer, data: bytes) -> None:
    """``data`` through ``writer`` (a :class:`Writer`, or :class:`pipeline.storage.Writer`): committed
    when every byte is written, aborted (nothing left behind) on any failure, interruptions included."""
    try:
        writer.write(data)
    except BaseException:
        writer.abort()
        raise
    writer.commit()
