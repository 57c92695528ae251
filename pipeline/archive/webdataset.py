"""WebDataset tar shards as the archive's input: each sample (the members of a shard that share a key)
is one image, archived like a file, and its other members (``.json``, ``.txt``, ``.cls`` …), kept
verbatim in the image's row as its sidecars, keyed by the sample's key.

``--input`` names shards as a single ``.tar``, a brace pattern (``shards-{000..011}.tar``,
``{a,b}``), or a folder whose top level holds ``*.tar`` files and no images; locally or on an
object store. A member is addressed by the chained URI ``wdsmember://MEMBER::SHARD`` (:class:`MemberFileSystem`) (read through
:mod:`pipeline.storage` like any source: the header, the hash, the pixels). The listing is in shard
order, then in each shard's member order; a sample's relative path is ``SHARD/KEY.EXT`` (``SHARD``
the shard's name without ``.tar``), so restored PNGs land in one folder per shard. A sample without
an image, or with two, is a manifest entry (``"unit": null``), as a file that cannot be listed is.

A sample's key and fields follow WebDataset: the key is the member's path up to the first ``.`` of
its file name, the field what follows (``seg.png`` is a field of its own, not an image; an image is a
field that is exactly one of the archive's extensions).
"""

from __future__ import annotations

import io
import posixpath
import re
import tarfile
from typing import Any, NamedTuple

from oml.imageio import IMAGE_SUFFIXES
from pipeline import storage
from pipeline.walk import Unlisted

try:
    import fsspec
    from fsspec.core import url_to_fs
    from fsspec.spec import AbstractFileSystem
except ImportError as exc:  # pragma: no cover - depends on the installation
    raise ImportError("the archiving pipeline needs fsspec: pip install 'oml-archive[pipeline]'") from exc

TAR = ".tar"
_BRACES = re.compile(r"\{([^{}]*)\}")
_FIELD = re.compile(r"^((?:.*/|)[^./]+)\.([^/]*)$")  # WebDataset's split of a member name into key and field


def expand_braces(pattern: str) -> list[str]:
    """``a-{000..002}.tar`` → ``a-000.tar``, ``a-001.tar``, ``a-002.tar`` (zero padding kept);
    ``{x,y}`` → each; several groups multiply, left to right."""
    match = _BRACES.search(pattern)
    if match is None:
        return [pattern]
    body, head, tail = match.group(1), pattern[: match.start()], pattern[match.end() :]
    span = re.fullmatch(r"(\d+)\.\.(\d+)", body)
    if span:
        lo, hi = span.group(1), span.group(2)
        width = len(lo) if lo.startswith("0") else 0
        choices = [str(i).zfill(width) for i in range(int(lo), int(hi) + 1)]
    else:
        choices = body.split(",")
    return [p for c in choices for p in expand_braces(head + c + tail)]


def shard_uris(uri: str) -> list[str] | None:
    """The shards ``uri`` names, in order, or ``None`` when it names no WebDataset (a folder of
    images, an image). Raises FileNotFoundError for a pattern naming a shard that is not there."""
    if _BRACES.search(uri) and uri.rstrip("/").lower().endswith(TAR):
        shards = [storage.normalize(u) for u in expand_braces(uri)]
        missing = [u for u in shards if not storage.exists(u)]
        if missing:
            raise FileNotFoundError(f"no such shard: {storage.redact(missing[0])} ({len(missing)} of the {len(shards)} the pattern names)")
        return shards
    root = storage.normalize(uri)
    with storage.refused_as_such(root):  # a refused request is said as such, never taken for "no shards"
        fs, path = url_to_fs(root)
        if not fs.exists(path):
            return None
        if fs.isfile(path):
            return [root] if path.lower().endswith(TAR) else None
        fs.invalidate_cache()
        names = [info["name"] for info in fs.ls(path, detail=True) if info.get("type", "file") == "file"]
    tars = sorted(n for n in names if n.lower().endswith(TAR))
    images = [n for n in names if n.lower().endswith(IMAGE_SUFFIXES)]
    if not tars or images:
        return None
    return [storage.join(root, posixpath.basename(n.replace("\\", "/"))) for n in tars]


def is_webdataset(uri: str) -> bool:
    return shard_uris(uri) is not None


PROTOCOL = "wdsmember"


def member_uri(shard: str, member: str) -> str:
    """The URI of ``member`` of the tar file ``shard`` (fsspec's chained form, ``wdsmember://MEMBER::SHARD``)."""
    return f"{PROTOCOL}://{member}::{shard}"


def is_member(uri: str) -> bool:
    return uri.startswith(PROTOCOL + "://")


class Sample(NamedTuple):
    """One sample of a shard: its key and its members (field → member name), in the shard's order."""

    key: str
    fields: dict[str, str]


class _Window(io.RawIOBase):
    """Bytes ``offset … offset+size-1`` of the binary file ``f``, as a seekable file of their own."""

    def __init__(self, f: Any, offset: int, size: int) -> None:
        self.f, self.offset, self.size, self.pos = f, offset, size, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        n = min(len(b), self.size - self.pos)
        if n <= 0:
            return 0
        self.f.seek(self.offset + self.pos)
        data = self.f.read(n)
        b[: len(data)] = data
        self.pos += len(data)
        return len(data)

    def seek(self, pos: int, whence: int = 0) -> int:
        self.pos = max(0, pos if whence == 0 else self.pos + pos if whence == 1 else self.size + pos)
        return self.pos

    def tell(self) -> int:
        return self.pos

    def close(self) -> None:
        if not self.closed:
            self.f.close()
        super().close()


class MemberFileSystem(AbstractFileSystem):
    """The members of one tar shard, read-only, each read with its own handle on the shard (threads
    may read members at once) by the byte range the shard's index gives; the index is read once per
    process (fsspec keeps one instance per shard). fsspec's own ``tar://`` shares one handle between
    reads and rebuilds its index on every URI, so it is not used."""

    protocol = PROTOCOL
    cachable = True

    def __init__(self, fo: str = "", target_protocol: str | None = None, target_options: dict | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.shard_fs = fsspec.filesystem(target_protocol or "file", **(target_options or {}))
        self.shard = fo
        self._members: dict[str, tuple[int, int, float]] | None = None
        self._samples: tuple[Sample, ...] = ()

    @classmethod
    def _strip_protocol(cls, path: str) -> str:
        return path[len(PROTOCOL) + 3 :] if path.startswith(PROTOCOL + "://") else path

    def index(self) -> tuple[tuple[Sample, ...], dict[str, tuple[int, int, float]]]:
        """The shard's samples in member order (members of one key gathered), and each member's data offset, size and mtime."""
        if self._members is None:
            members: dict[str, tuple[int, int, float]] = {}
            samples: dict[str, dict[str, str]] = {}
            with self.shard_fs.open(self.shard, "rb") as f, tarfile.open(fileobj=f, mode="r:") as tar:
                for info in tar:
                    if not info.isfile():
                        continue
                    members[info.name] = (info.offset_data, info.size, float(info.mtime))
                    match = _FIELD.match(info.name)
                    key, field = (match.group(1), match.group(2)) if match else (info.name, "")
                    samples.setdefault(key, {})[field] = info.name
            self._members, self._samples = members, tuple(Sample(k, f) for k, f in samples.items())
        return self._samples, self._members

    def _member(self, path: str) -> tuple[int, int, float]:
        members = self.index()[1]
        if path not in members:
            raise FileNotFoundError(f"{path} is not in {self.shard}")
        return members[path]

    def info(self, path: str, **kwargs: Any) -> dict[str, Any]:
        path = self._strip_protocol(path)
        if path in ("", "/"):
            return {"name": "", "size": 0, "type": "directory"}
        _, size, mtime = self._member(path)
        return {"name": path, "size": size, "type": "file", "mtime": mtime}

    def ls(self, path: str = "", detail: bool = True, **kwargs: Any) -> list[Any]:
        infos = [self.info(m) for m in self.index()[1]]
        return infos if detail else [i["name"] for i in infos]

    def cat_file(self, path: str, start: int | None = None, end: int | None = None, **kwargs: Any) -> bytes:
        offset, size, _ = self._member(self._strip_protocol(path))
        start, end = start or 0, size if end is None else min(end, size)
        if start < 0 or end < 0:
            start, end = (size + start if start < 0 else start), (size + end if end < 0 else end)
        return self.shard_fs.cat_file(self.shard, start=offset + start, end=offset + max(start, end))

    def _open(self, path: str, mode: str = "rb", **kwargs: Any) -> Any:
        if mode != "rb":
            raise PermissionError(f"{PROTOCOL}:// is read-only")
        offset, size, _ = self._member(self._strip_protocol(path))
        return io.BufferedReader(_Window(self.shard_fs.open(self.shard, "rb"), offset, size), 1 << 16)


fsspec.register_implementation(PROTOCOL, MemberFileSystem, clobber=True)


def _shard_fs(shard: str) -> MemberFileSystem:
    return url_to_fs(member_uri(shard, ""))[0]


def _stem(shard: str) -> str:
    name = posixpath.basename(shard.replace("\\", "/"))
    return name[: -len(TAR)] if name.lower().endswith(TAR) else name


def list_samples(uri: str, suffixes: tuple[str, ...], unlisted: list[Unlisted]) -> list[storage.SourceFile]:
    """One source per sample of the shards ``uri`` names (its image member), in shard and member
    order; a sample with no image or with two is appended to ``unlisted`` (path ``SHARD/KEY``)."""
    wanted = {s.lower().lstrip(".") for s in suffixes}
    files = []
    for shard in shard_uris(uri) or []:
        try:
            samples, members = _shard_fs(shard).index()
        except tarfile.TarError as exc:  # not a tar (a storage error is the job's: it raises)
            unlisted.append(Unlisted(_stem(shard) + "/", f"not a readable tar shard: {type(exc).__name__}: {exc}"))
            continue
        for sample in samples:
            images = [f for f in sample.fields if f.lower() in wanted]
            where = f"{_stem(shard)}/{sample.key}"
            if len(images) != 1:
                fields = ", ".join(sample.fields) or "none"
                why = "no image" if not images else f"{len(images)} images ({', '.join(images)}); one is archived per sample"
                unlisted.append(Unlisted(where, f"sample {sample.key!r}: {why} (fields: {fields})"))
                continue
            name = sample.fields[images[0]]
            files.append(storage.SourceFile(member_uri(shard, name), f"{where}.{images[0]}", members[name][1]))
    return files


def sample_of(uri: str) -> tuple[str, list[dict[str, Any]]]:
    """The key of the sample whose image member ``uri`` is, and its other members, verbatim
    (``{"name": field, "data": bytes}``, in the shard's order)."""
    fs, member = url_to_fs(uri)
    for sample in fs.index()[0]:
        if member in sample.fields.values():
            return sample.key, [{"name": f, "data": fs.cat_file(m)} for f, m in sample.fields.items() if m != member]
    raise FileNotFoundError(f"{member} is not in {storage.redact(fs.shard)}")
