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

import functools
import hashlib
import json
import os
import posixpath
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, NamedTuple, TypeVar
from urllib.parse import urlsplit, urlunsplit

from oml.imageio import IMAGE_SUFFIXES
from pipeline import files as local_files
from pipeline.walk import Unlisted, walk_files

try:
    import fsspec
    from fsspec.core import url_to_fs
except ImportError as exc:  # pragma: no cover - depends on the installation
    raise ImportError("the archiving pipeline needs fsspec: pip install 'oml-archive[pipeline]'") from exc

# fsspec warns on every S3 use, driver and workers alike, that an s3fs older than 0.5 is slow with
# dask (which nothing here uses); with the pinned boto3 that is the s3fs pip installs, so a user
# would read six lines of warning around every one-line error.
warnings.filterwarnings("ignore", message="Your installed version of s3fs is very old", category=UserWarning)


class StorageRefused(Exception):
    """The object store refused the request: wrong or missing credentials, no permission.

    Deliberately not an OSError, so that no caller takes a refusal for a missing or damaged file
    (``not an oml archive``, ``source unavailable``), and Ray does not retry it."""


_REFUSED_CODES = {
    "AccessDenied", "AccountProblem", "AllAccessDisabled", "ExpiredToken", "InvalidAccessKeyId", "InvalidToken",
    "SignatureDoesNotMatch", "TokenRefreshRequired", "InvalidSecurity", "RequestTimeTooSkewed", "UnauthorizedAccess",
}


def _remote_cause(exc: BaseException) -> BaseException | None:
    """The object store client's own error behind ``exc`` (s3fs raises its translations of botocore's
    errors inside their handlers), ``None`` for a local error."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if type(exc).__module__.startswith("botocore"):
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


def _refusal(exc: BaseException) -> str | None:
    """Why the object store refused the request behind ``exc`` (a 401/403 answer, an authentication
    error code, no credentials at all), or ``None`` when it did not."""
    cause = _remote_cause(exc)
    if cause is None:
        return None
    if type(cause).__name__ in ("NoCredentialsError", "PartialCredentialsError"):
        return str(cause)
    response = getattr(cause, "response", None)
    if not isinstance(response, dict):
        return None
    error = response.get("Error", {})
    code, status = str(error.get("Code", "")), response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    if code in _REFUSED_CODES or status in (401, 403) or code in ("401", "403"):
        return f"{code or status}: {error.get('Message') or 'Forbidden'}"
    return None


@contextmanager
def refused_as_such(uri: str) -> Iterator[None]:
    """Inside, a request that the object store refused raises :class:`StorageRefused` (naming ``uri``)."""
    try:
        yield
    except StorageRefused:
        raise
    except Exception as exc:
        why = _refusal(exc)
        if why is None:
            raise
        raise StorageRefused(f"storage refused the request (credentials?) for {redact(uri)}: {why}") from exc


_F = TypeVar("_F", bound=Callable[..., Any])


def _refusals(func: _F) -> _F:
    """``func(uri, ...)`` under :func:`refused_as_such`."""

    @functools.wraps(func)
    def checked(uri: str, *args: Any, **kwargs: Any) -> Any:
        with refused_as_such(uri):
            return func(uri, *args, **kwargs)

    return checked  # type: ignore[return-value]


def explain(exc: BaseException) -> str:
    """One line for a storage error: a local one in words (``no space left on device: PATH``), a
    refusal (:class:`StorageRefused`), or an object store that could not be reached or answered
    with an error."""
    if isinstance(exc, StorageRefused):
        return str(exc)
    cause = _remote_cause(exc)
    if cause is None and isinstance(exc, OSError) and (exc.filename is not None or local_files.is_local_failure(exc)):
        return local_files.describe(exc)
    if cause is not None and isinstance(getattr(cause, "response", None), dict):
        code = cause.response.get("Error", {}).get("Code", "")
        return f"storage answered with an error ({code or type(exc).__name__}): {exc}"
    return f"storage unreachable ({type(cause or exc).__name__}): {exc}"


def unreachable_errors() -> tuple[type[BaseException], ...]:
    """Exception types of storage that failed as a whole: unreachable, refusing the request, or a
    local file system that is full, read-only or forbidden; the jobs report them in one line
    (:func:`explain`)."""
    errors: list[type[BaseException]] = [OSError, StorageRefused]
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
    if not uri:
        raise ValueError("an empty path ('') names no file or folder")
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


@_refusals
def list_files(uri: str, suffixes: tuple[str, ...], unlisted: list[Unlisted] | None = None) -> list[SourceFile]:
    """Every file under ``uri`` (recursive) whose name ends in one of ``suffixes`` (any case), sorted by relative path.

    ``uri`` may also name a single file, which is returned whatever its suffix. Locally, what
    cannot be listed (a folder under ``uri`` that cannot be read, a broken link: see
    :func:`pipeline.walk.walk_files`) is appended to ``unlisted``, or raises without it; an object
    store's listing either answers whole or raises.

    Raises:
        FileNotFoundError: nothing exists at ``uri``.
        OSError: ``uri`` cannot be listed, or (without ``unlisted``) something under it.
    """
    fs, root = url_to_fs(normalize(uri))
    fs.invalidate_cache()
    if fs.isfile(root):
        return [SourceFile(_uri(fs, root), posixpath.basename(root.replace(os.sep, "/")), int(fs.size(root)))]
    if not fs.isdir(root):
        raise FileNotFoundError(f"no such file or folder: {redact(uri)}")
    wanted = tuple(s.lower() for s in suffixes)
    if _is_local(fs):
        return _walk_local(root, wanted, unlisted)
    found = _find_remote(fs, root)
    prefix = root.rstrip("/") + "/"
    files = []
    for path, info in found.items():
        if info.get("type", "file") != "file" or not path.lower().endswith(wanted):
            continue
        rel = path[len(prefix) :] if path.startswith(prefix) else posixpath.basename(path)
        files.append(SourceFile(_uri(fs, path), rel.replace(os.sep, "/"), int(info.get("size") or 0)))
    return sorted(files, key=lambda f: f.relative_path)


def _find_remote(fs: fsspec.AbstractFileSystem, root: str) -> dict[str, dict[str, Any]]:
    """Every object under ``root`` by name, each prefix listed in turn, any listing error raised:
    fsspec's ``find`` and ``walk`` leave out a prefix whose listing fails (``walk`` does not pass its
    ``on_error`` down to the prefixes below the first)."""
    found: dict[str, dict[str, Any]] = {}
    pending = [root.rstrip("/")]
    while pending:
        folder = pending.pop()
        for info in fs.ls(folder, detail=True):
            name = info["name"].rstrip("/")
            if name == folder:  # the prefix's own marker object
                continue
            if info.get("type") == "directory":
                pending.append(name)
            else:
                found[name] = info
    return found


def _walk_local(root: str, wanted: tuple[str, ...], unlisted: list[Unlisted] | None) -> list[SourceFile]:
    return [SourceFile(os.path.abspath(path), rel, os.path.getsize(path)) for path, rel in walk_files(root, wanted, unlisted)]


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


@_refusals
def read_bytes(uri: str) -> bytes:
    fs, path = url_to_fs(uri)
    return fs.cat_file(path)


@_refusals
def read_range(uri: str, offset: int, length: int) -> bytes:
    """Bytes ``offset … offset+length-1`` of the file at ``uri`` (an object store serves the range alone)."""
    fs, path = url_to_fs(uri)
    return fs.cat_file(path, start=offset, end=offset + length)


@_refusals
def file_sha256(uri: str, chunk: int = 8 << 20) -> str:
    """SHA-256 of the file at ``uri``, read in pieces (memory does not grow with the file)."""
    digest = hashlib.sha256()
    with open_file(uri) as f:
        while piece := f.read(chunk):
            digest.update(piece)
    return digest.hexdigest()


@_refusals
def write_bytes(uri: str, data: bytes, replace: bool = True) -> bool:
    """Write a whole file so that readers see either nothing, the old file or the new one
    (:class:`Writer`: a renamed local temporary; on an object store one upload). With
    ``replace=False`` an existing file is never replaced: one holding ``data`` already is left as
    it is (``False``: nothing written), another raises :class:`pipeline.files.ExistingFileError`."""
    fs, path = url_to_fs(uri)
    if _is_local(fs):
        return local_files.write_file(path, data, replace)
    if not replace and _holds(fs, path, len(data), hashlib.sha256(data).digest()):
        return False
    local_files.write_through(Writer(uri, replace), data)
    return True


def _holds(fs: fsspec.AbstractFileSystem, path: str, size: int, digest: bytes) -> bool:
    """Whether the remote ``path`` holds these bytes; ExistingFileError when a different file is there."""
    try:
        info = fs.info(path)
    except FileNotFoundError:
        return False
    if info.get("type") == "file" and int(info.get("size") or 0) == size and bytes.fromhex(file_sha256(fs.unstrip_protocol(path))) == digest:
        return True
    raise local_files.ExistingFileError(fs.unstrip_protocol(path))


class Writer:
    """A file written piece by piece that readers see only once :meth:`commit` has run, and never
    if :meth:`abort` runs instead: locally a temporary beside the target, renamed over it
    (:class:`pipeline.files.Writer`); on an object store a multipart upload, completed at commit
    and discarded at abort. ``replace=False``: as :func:`write_bytes`, checked at commit."""

    def __init__(self, uri: str, replace: bool = True) -> None:
        self.uri = uri
        self.fs, self.path = url_to_fs(uri)
        self.local = _is_local(self.fs)
        self.replace = replace
        self.local_writer = local_files.Writer(self.path, replace) if self.local else None
        if not self.local:
            self.sha, self.size = hashlib.sha256(), 0
            with refused_as_such(uri):
                self.file = self.fs.open(self.path, "wb")

    def write(self, data: bytes) -> None:
        if self.local_writer is not None:
            self.local_writer.write(data)
            return
        with refused_as_such(self.uri):
            self.file.write(data)
        self.sha.update(data)
        self.size += len(data)

    def commit(self) -> None:
        if self.local_writer is not None:
            self.local_writer.commit()
            return
        try:
            with refused_as_such(self.uri):
                if not self.replace and _holds(self.fs, self.path, self.size, self.sha.digest()):
                    self.abort()  # the same bytes are there already
                    return
                self.file.close()
        except BaseException:
            self.abort()
            raise
        self.fs.invalidate_cache(posixpath.dirname(self.path))

    def abort(self) -> None:
        if self.local_writer is not None:
            self.local_writer.abort()
        elif hasattr(self.file, "discard"):
            if not self.file.closed:
                self.file.discard()  # fsspec: drop the buffer, abort any multipart upload
                self.file.closed = True  # so that its finaliser does not try to upload the dropped buffer
        elif not self.file.closed:
            self.file.close()
            self.fs.rm(self.path)


def remove_stale_temporaries(folder: str) -> int:
    """Delete the temporaries that killed writers left in a local ``folder`` (not below it;
    :func:`pipeline.files.remove_stale`); the caller makes sure no writer is running. Returns how many."""
    if not is_local(folder):
        return 0
    return local_files.remove_stale(normalize(folder))


@_refusals
def exists(uri: str) -> bool:
    """Whether a file or folder is at ``uri``. Only "not found" is ``False``: an object store that
    refuses the request raises :class:`StorageRefused`, one that cannot be reached its error."""
    fs, path = url_to_fs(uri)
    fs.invalidate_cache(posixpath.dirname(path))
    try:
        fs.info(path)
    except (FileNotFoundError, NotADirectoryError):
        return False
    return True


def same_place(a: str, b: str) -> bool:
    """Whether the URIs ``a`` and ``b`` name one file or folder: locally by identity (through links
    and mounts, :func:`pipeline.files.same`), remotely by their normalised spelling."""
    if is_local(a) and is_local(b):
        return local_files.same(normalize(a), normalize(b))
    return normalize(a) == normalize(b)


def place(uri: str) -> Callable[[str], bool]:
    """A test of whether a URI is ``uri`` or lies under it (locally by identity, as
    :class:`pipeline.files.Place`; remotely by prefix). Nothing local at ``uri``: always False."""
    if is_local(uri):
        found = local_files.Place.of(normalize(uri))
        return (lambda other: is_local(other) and found.holds(normalize(other))) if found else (lambda other: False)
    root = normalize(uri)
    return lambda other: not is_local(other) and (normalize(other) == root or normalize(other).startswith(root + "/"))


@_refusals
def glob(uri_pattern: str) -> list[str]:
    """URIs matching a glob pattern, sorted (a fresh listing, never a cached one)."""
    fs, pattern = url_to_fs(uri_pattern)
    fs.invalidate_cache()
    return sorted(_uri(fs, p) for p in fs.glob(pattern))


def read_json(uri: str) -> Any:
    return json.loads(read_bytes(uri))


def write_json(uri: str, obj: Any) -> None:
    write_bytes(uri, (json.dumps(obj, indent=1, sort_keys=True) + "\n").encode())


@_refusals
def open_file(uri: str) -> Any:
    """A binary file object reading ``uri`` on demand (a remote object is fetched by ranges, as read)."""
    fs, path = url_to_fs(uri)
    return fs.open(path, "rb")


@_refusals
def size(uri: str) -> int:
    """Bytes of the file at ``uri`` (FileNotFoundError when there is none)."""
    fs, path = url_to_fs(uri)
    return int(fs.size(path))


def mtime(uri: str) -> float | None:
    """The modification time of the file at ``uri`` in seconds since the epoch, ``None`` when the
    store does not say (or the file cannot be asked)."""
    try:
        fs, path = url_to_fs(uri)
        info = fs.info(path)
    except (OSError, ValueError):
        return None
    value = info.get("mtime", info.get("LastModified", info.get("last_modified")))
    if hasattr(value, "timestamp"):
        return float(value.timestamp())
    try:
        return float(value) if value is not None else None
    except (TypeError, ValueError):
        return None
