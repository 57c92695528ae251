"""Train from an archive: a PyTorch ``IterableDataset`` and a Ray Data ``Dataset`` of its decoded images.

    from torch.utils.data import DataLoader
    from pipeline.dataset import ArchiveDataset, collate, read_archive

    data = ArchiveDataset("s3://bucket/archive", shuffle=True, seed=0)
    for epoch in range(3):
        data.set_epoch(epoch)
        for sample in DataLoader(data, num_workers=4, batch_size=None):
            sample["key"], sample["image"], sample["json"]      # image: uint8 (3, H, W); sidecars as bytes

    ds = read_archive("s3://bucket/archive", concurrency=4)   # Ray Data: columns path, key, image, metadata, sidecars …

Each sample is a dict: ``key`` (the WebDataset sample key, else the path), ``path``, ``image``,
``metadata`` (the source's metadata blocks, ``(kind, bytes)``), ``sidecars`` (``{field: bytes}``)
and each sidecar again under its field name, as WebDataset gives it (``json``, ``cls``, ``txt`` …).

Every image is read with the checks a restore makes (:mod:`pipeline.archive.reader`): a damaged unit
is an error naming it, never a silently shorter epoch; an archive with images that a missing or
damaged unit leaves unreadable is refused when opened (``strict=False`` reads the rest).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch.utils.data import IterableDataset, get_worker_info

from oml import tiling
from pipeline.archive.reader import Archive, ArchiveError, Entry, open_archive

RESERVED = ("key", "path", "image", "metadata", "sidecars")


def sample_of(entry: Entry, image: torch.Tensor) -> dict[str, Any]:
    """The dict a dataset yields for ``entry`` with its decoded ``image``."""
    sample: dict[str, Any] = {
        "key": entry.key, "path": entry.path, "image": image, "metadata": entry.metadata, "sidecars": dict(entry.sidecars),
    }
    for name, data in entry.sidecars.items():
        if name not in RESERVED:
            sample[name] = data
    return sample


def collate(batch: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """A batch of samples: ``image`` stacked into ``(B, 3, H, W)`` when the images share a size (else a
    list), every other field a list (``DataLoader(..., batch_size=B, collate_fn=collate)``)."""
    out: dict[str, Any] = {k: [s.get(k) for s in batch] for k in dict.fromkeys(k for s in batch for k in s)}
    images = out["image"]
    if images and all(i.shape == images[0].shape for i in images):
        out["image"] = torch.stack(images)
    return out


def _rank_and_world(rank: int | None, world_size: int | None) -> tuple[int, int]:
    if rank is not None and world_size is not None:
        return rank, world_size
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


class ArchiveDataset(IterableDataset):
    """The archive's images as a ``torch.utils.data.IterableDataset`` (see the module's docstring).

    Sharding: the epoch's order is cut into ``world_size × num_workers`` contiguous parts, one per
    DataLoader worker of each rank (``rank``/``world_size`` default to ``torch.distributed``'s), so
    each image is read once per epoch, and each worker reads few units. The order is the archive's,
    or with ``shuffle`` the units in a random order and the images of each unit shuffled, drawn from
    ``seed`` and the epoch (:meth:`set_epoch`), the same on every rank and worker. ``region``
    (``left, top, width, height``) reads that window of every image, from the row groups holding it;
    an image it does not fit is an error. The model is loaded once per worker process.
    """

    def __init__(
        self,
        uri: str,
        *,
        shuffle: bool = False,
        seed: int = 0,
        region: Sequence[int] | None = None,
        rank: int | None = None,
        world_size: int | None = None,
        strict: bool = True,
        weights: str | None = None,
        metric: str | None = None,
    ) -> None:
        super().__init__()
        self.archive: Archive = open_archive(uri, weights, metric)
        if strict:
            self.archive.check()
        self.shuffle, self.seed, self.epoch = shuffle, seed, 0
        self.region = tiling.Region(*region) if region is not None else None
        self.rank, self.world_size = rank, world_size

    def set_epoch(self, epoch: int) -> None:
        """The epoch whose order to draw (with ``shuffle``); call it before each epoch's DataLoader iteration."""
        self.epoch = epoch

    def order(self) -> list[Entry]:
        """This epoch's order of every image (before sharding)."""
        entries = self.archive.entries
        if not self.shuffle:
            return entries
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        units: dict[int, list[Entry]] = {}
        for e in entries:
            units.setdefault(self.archive.unit_of(e.path), []).append(e)
        groups = list(units.values())
        out = []
        for i in torch.randperm(len(groups), generator=g).tolist():
            group = groups[i]
            out += [group[j] for j in torch.randperm(len(group), generator=g).tolist()]
        return out

    def shard(self) -> list[Entry]:
        """The part of :meth:`order` this rank's worker reads."""
        rank, world = _rank_and_world(self.rank, self.world_size)
        info = get_worker_info()
        workers, worker = (info.num_workers, info.id) if info is not None else (1, 0)
        parts, part = world * workers, rank * workers + worker
        entries = self.order()
        n = len(entries)
        return entries[part * n // parts : (part + 1) * n // parts]

    def __len__(self) -> int:
        rank, world = _rank_and_world(self.rank, self.world_size)
        n = len(self.archive)
        return (rank + 1) * n // world - rank * n // world

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for entry in self.shard():
            yield sample_of(entry, self.archive.read(entry.path, self.region))


class _DecodeBatch:
    """The Ray Data UDF of :func:`read_archive`: opens the archive once per actor (the model is then
    loaded once per actor process), decodes each row's image with restore's checks."""

    def __init__(self, uri: str, region: tiling.Region | None, weights: str | None, metric: str | None, sidecars: tuple[str, ...]) -> None:
        self.archive = open_archive(uri, weights, metric)
        self.region, self.sidecars = region, sidecars

    def __call__(self, batch: Any) -> Any:
        import pyarrow as pa
        from ray.data.extensions import ArrowTensorArray

        entries = [self.archive.entry(p) for p in batch.column("path").to_pylist()]
        images = [self.archive.read(e.path, self.region).numpy() for e in entries]
        out = batch.drop_columns([c for c in ("key", *self.sidecars) if c in batch.column_names])
        out = out.append_column("key", pa.array([e.key for e in entries], pa.string()))
        for name in self.sidecars:
            out = out.append_column(name, pa.array([e.sidecars.get(name) for e in entries], pa.binary()))
        return out.append_column("image", ArrowTensorArray.from_numpy(images))


def read_archive(
    uri: str,
    *,
    region: Sequence[int] | None = None,
    concurrency: int = 1,
    num_cpus: float = 1,
    batch_size: int = 16,
    weights: str | None = None,
    metric: str | None = None,
    shared_path: bool = False,
) -> Any:
    """The archive's images as a Ray Data ``Dataset``: ``read_parquet`` of the committed units'
    images tables (their rows: ``path``, ``metadata``, ``width`` … and, for WebDataset inputs, the
    ``sidecars`` list) and ``map_batches`` that decodes each row on ``concurrency`` actors of
    ``num_cpus`` CPUs each, adding ``key``, ``image`` (uint8 ``(3, H, W)``; variable-shaped when sizes
    differ) and each sidecar field as a binary column (null where a sample has none). Uses the Ray
    the caller started (else Ray Data starts one). A local ``uri`` on a Ray cluster of several nodes
    (or one an autoscaler may grow) is refused with :class:`pipeline.archive.runner.ClusterError` unless ``shared_path`` says
    every node mounts it at the same place. Raises :class:`ArchiveError` when some image cannot be
    read (named)."""
    import ray
    import ray.data

    from pipeline.archive import layout
    from pipeline.archive.runner import check_shared_paths

    if ray.is_initialized():  # else Ray Data starts a local Ray: one node
        check_shared_paths(ray, {"uri": uri}, shared_path, say_shared="pass shared_path=True")

    archive = open_archive(uri, weights, metric)
    archive.check()
    if not len(archive):
        raise ArchiveError(f"{archive.root}: the archive has no images yet")
    units = sorted({archive.unit_of(e.path) for e in archive})
    sidecars = tuple(dict.fromkeys(n for e in archive for n in e.sidecars if n not in RESERVED))
    files = [layout.unit_uri(archive.root, u, "images") for u in units]
    ds = ray.data.read_parquet(files, columns=[c for c in _IMAGE_COLUMNS if c != "sidecars" or sidecars])
    return ds.map_batches(
        _DecodeBatch,
        fn_constructor_args=(archive.root, tiling.Region(*region) if region is not None else None, weights, metric, sidecars),
        batch_format="pyarrow",
        batch_size=batch_size,
        concurrency=concurrency,
        num_cpus=num_cpus,
    )


_IMAGE_COLUMNS = ("path", "width", "height", "source_format", "source_bytes", "metadata", "sidecars")
