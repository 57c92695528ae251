"""Files on local disk or object storage, addressed by URI, through fsspec.

A URI is a local path (``/data/photos``, ``file:///data/photos``) or a remote
one (``s3://bucket/prefix``). Local URIs are made absolute, because Ray workers
do not share the driver's working directory.

Credentials and endpoints are never passed through here: fsspec and s3fs read
them from the standard places (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``,
``AWS_ENDPOINT_URL``, ``~/.aws``, an instance role, or fsspec's configuration
such as ``FSSPEC_S3_ENDPOINT_URL``), so they never appear in configs, logs or
summaries.
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import uuid
from typing import Any, NamedTuple
from urllib.parse import urlsplit, urlunsplit

from oml.imageio import IMAGE_SUFFIXES
from pipeline.walk import walk_files

try:
    import fsspec
    from fsspec.core import url_to_fs
except ImportError as exc:  # pragma: no cover - depends on the installation
    raise ImportError("the archiving pipeline needs fsspec: pip install 'oml-archive[pipeline]'") from exc


def unreachable_errors() -> tuple[type[BaseException], ...]:
    """Exception types that mean the storage could not be reached or refused the request
    (network, endpoint, credentials): the jobs report them in one line."""
    errors: list[type[BaseException]] = [OSError]
    try:
        from botocore.exceptions import BotoCoreError, ClientError

        errors += [BotoCoreError, ClientError]
    except ImportError:  # no S3 support installed
        pass
    return tuple(errors)


class SourceFile(NamedTuple):
    """One listed input: its URI, its path relative to the listed root (``/``-separated), its size in bytes."""

    uri: str
    relative_path: str
    size: int


def _is_local(fs: fsspec.AbstractFileSystem) -> bool:
    protocols = (fs.protocol,) if isinstance(fs.protocol, str) else fs.protocol
    return "file" in protocols or "local" in protocols


def normalize(uri: str) -> str:
    """A canonical spelling: absolute local paths, ``scheme://path`` without a trailing slash for remote ones."""
    fs, path = url_to_fs(uri)
    if _is_local(fs):
        return os.path.abspath(os.path.expanduser(path))
    return fs.unstrip_protocol(path.rstrip("/"))


def is_local(uri: str) -> bool:
    return _is_local(url_to_fs(uri)[0])


def join(uri: str, *parts: str) -> str:
    """``uri`` with ``/``-separated ``parts`` appended."""
    if is_local(uri):
        return os.path.join(normalize(uri), *(p.replace("/", os.sep) for p in parts))
    return posixpath.join(uri.rstrip("/"), *parts)


def safe_relative(path: str) -> str:
    """``path`` if it is a plain relative ``/``-separated path that stays inside any folder it is
    joined to; otherwise ValueError. (Archive rows carry paths; a row must not place a file.)"""
    parts = path.split("/")
    if (
        not path
        or "\\" in path
        or "\0" in path
        or path.startswith("/")
        or ":" in parts[0]
        or any(p in ("", ".", "..") for p in parts)
    ):
        raise ValueError(f"unsafe path {path!r}: not a plain relative path")
    return path


def redact(uri: str) -> str:
    """``uri`` for printing: any ``user:password@`` part is removed."""
    parts = urlsplit(uri)
    if "@" not in parts.netloc:
        return uri
    return urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]))


def _uri(fs: fsspec.AbstractFileSystem, path: str) -> str:
    return path if _is_local(fs) else fs.unstrip_protocol(path)


def list_files(uri: str, suffixes: tuple[str, ...]) -> list[SourceFile]:
    """Every file under ``uri`` (recursive) whose name ends in one of ``suffixes`` (any case), sorted by relative path.

    ``uri`` may also name a single file, which is returned whatever its suffix.

    Raises:
        FileNotFoundError: nothing exists at ``uri``.
    """
    fs, root = url_to_fs(normalize(uri))
    fs.invalidate_cache()
    if fs.isfile(root):
        return [SourceFile(_uri(fs, root), posixpath.basename(root.replace(os.sep, "/")), int(fs.size(root)))]
    if not fs.isdir(root):
        raise FileNotFoundError(f"no such file or folder: {redact(uri)}")
    wanted = tuple(s.lower() for s in suffixes)
    if _is_local(fs):
        return _walk_local(root, wanted)
    found = fs.find(root, withdirs=False, detail=True)
    prefix = root.rstrip("/") + "/"
    files = []
    for path, info in found.items():
        if info.get("type", "file") != "file" or not path.lower().endswith(wanted):
            continue
        rel = path[len(prefix) :] if path.startswith(prefix) else posixpath.basename(path)
        files.append(SourceFile(_uri(fs, path), rel.replace(os.sep, "/"), int(info.get("size") or 0)))
    return sorted(files, key=lambda f: f.relative_path)


def _walk_local(root: str, wanted: tuple[str, ...]) -> list[SourceFile]:
    return [SourceFile(os.path.abspath(path), rel, os.path.getsize(path)) for path, rel in walk_files(root, wanted)]


def list_images(uri: str) -> list[str]:
    """URIs of the image files under ``uri`` (local or remote, recursive), sorted by relative path.

    Raises:
        ValueError: the folder does not exist or holds no image (a user mistake, said in one line).
    """
    try:
        files = list_files(uri, IMAGE_SUFFIXES)
    except FileNotFoundError:
        raise ValueError(f"image folder {redact(uri)} does not exist") from None
    if not files:
        raise ValueError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {redact(uri)}")
    return [f.uri for f in files]


def read_bytes(uri: str) -> bytes:
    fs, path = url_to_fs(uri)
    return fs.cat_file(path)


def read_range(uri: str, offset: int, length: int) -> bytes:
    """Bytes ``offset … offset+length-1`` of the file at ``uri`` (an object store serves the range alone)."""
    fs, path = url_to_fs(uri)
    return fs.cat_file(path, start=offset, end=offset + length)


def file_sha256(uri: str, chunk: int = 8 << 20) -> str:
    """SHA-256 of the file at ``uri``, read in pieces (memory does not grow with the file)."""
    digest = hashlib.sha256()
    with open_file(uri) as f:
        while piece := f.read(chunk):
            digest.update(piece)
    return digest.hexdigest()


def write_bytes(uri: str, data: bytes) -> None:
    """Write a whole file so that readers see either nothing, the old file or the new one
    (:class:`Writer`: a renamed local temporary; on an object store one upload)."""
    writer = Writer(uri)
    try:
        writer.write(data)
    except BaseException:
        writer.abort()
        raise
    writer.commit()


class Writer:
    """A file written piece by piece that readers see only once :meth:`commit` has run, and never
    if :meth:`abort` runs instead: locally a temporary beside the target, renamed over it; on an
    object store a multipart upload, completed at commit and discarded at abort."""

    def __init__(self, uri: str) -> None:
        self.fs, self.path = url_to_fs(uri)
        self.local = _is_local(self.fs)
        if self.local:
            os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
            self.tmp = f"{self.path}.{uuid.uuid4().hex}.tmp"
            self.file = open(self.tmp, "wb")
        else:
            self.file = self.fs.open(self.path, "wb")

    def write(self, data: bytes) -> None:
        self.file.write(data)

    def commit(self) -> None:
        if self.local:
            try:
                self.file.flush()
                os.fsync(self.file.fileno())
                self.file.close()
                os.replace(self.tmp, self.path)
            except BaseException:
                self.abort()  # no temporary left behind
                raise
        else:
            self.file.close()
            self.fs.invalidate_cache(posixpath.dirname(self.path))

    def abort(self) -> None:
        if self.local:
            self.file.close()
            if os.path.exists(self.tmp):
                os.remove(self.tmp)
        elif hasattr(self.file, "discard"):
            self.file.discard()  # fsspec: drop the buffer, abort any multipart upload
        else:
            self.file.close()
            self.fs.rm(self.path)


def remove_stale_temporaries(folder: str) -> int:
    """Delete the temporary files that killed writers left in a local ``folder`` (``*.tmp`` of
    :func:`write_bytes`); the caller makes sure no writer is running. Returns how many."""
    if not is_local(folder) or not os.path.isdir(normalize(folder)):
        return 0
    stale = [e.path for e in os.scandir(normalize(folder)) if e.is_file() and e.name.endswith(".tmp")]
    for path in stale:
        os.remove(path)
    return len(stale)


def exists(uri: str) -> bool:
    fs, path = url_to_fs(uri)
    fs.invalidate_cache(posixpath.dirname(path))
    return fs.exists(path)


def glob(uri_pattern: str) -> list[str]:
    """URIs matching a glob pattern, sorted (a fresh listing, never a cached one)."""
    fs, pattern = url_to_fs(uri_pattern)
    fs.invalidate_cache()
    return sorted(_uri(fs, p) for p in fs.glob(pattern))


def read_json(uri: str) -> Any:
    return json.loads(read_bytes(uri))


def write_json(uri: str, obj: Any) -> None:
    write_bytes(uri, (json.dumps(obj, indent=1, sort_keys=True) + "\n").encode())


def open_file(uri: str) -> Any:
    """A binary file object reading ``uri`` on demand (a remote object is fetched by ranges, as read)."""
    fs, path = url_to_fs(uri)
    return fs.open(path, "rb")


def size(uri: str) -> int:
    """Bytes of the file at ``uri`` (FileNotFoundError when there is none)."""
    fs, path = url_to_fs(uri)
    return int(fs.size(path))
