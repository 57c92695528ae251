"""Archive an image collection with the codec on Ray, and restore it.

Layout of an archive at ``OUT`` (local folder or ``s3://bucket/prefix``)::

    OUT/plan.json                       settings + listing fingerprint, written first
    OUT/shards/shard-000000.parquet     one row per image (pipeline.schema)
    OUT/shards/shard-000000.done.json   commit marker, written last, with the shard's stats
    OUT/manifest.json                   every failed input with its reason
    OUT/summary.json                    totals of the archive and of the last run

Shards are the sorted input listing cut every ``shard_size`` files, so shard
``i`` always holds the same files. A shard is written by one Ray task (retried
when its worker dies): the Parquet file first, then its done marker. A re-run
skips every shard whose marker is intact and names its Parquet file's size and
SHA-256, and redoes the others (no marker, damaged marker, truncated or missing
file), so rows are never duplicated or lost and damage is repaired.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import hashlib
import json
import math
import os
import posixpath
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch

# CompressAI's import triggers a torch deprecation warning that means nothing to a user (in every worker).
warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*", category=FutureWarning)

from oml import codec, ratecontrol, tiling
from oml.adapt import AdaptConfig
from oml.imageio import DEFAULT_MAX_PIXELS, IMAGE_SUFFIXES, ImageDecodeError, decode_image, encode_png
from oml.models.variable_rate import VariableRateModel
from oml.models.zoo import DEFAULT_MODEL, ModelUnavailableError, load_model, quality_group
from pipeline import reaper as reaper_mod
from pipeline import schema, storage
from pipeline.walk import output_names

PLAN_FORMAT = "oml-archive-plan/1"
MARKER_FORMAT = "oml-archive-shard/2"

# Reading a source can fail for good (the file is gone or unreadable: recorded
# as a failed input) or for a while (network, throttling: the shard is retried).
_PERMANENT_READ_ERRORS = (FileNotFoundError, IsADirectoryError, PermissionError)


# --------------------------------------------------------------------------- configuration


@dataclass(frozen=True)
class ModelConfig:
    """Which model codes the images.

    ``weights`` is a local oml weights file (on every node); ``pretrained=False``
    with no weights builds random weights seeded by ``seed`` (tests), the same
    on every worker.
    """

    name: str = DEFAULT_MODEL
    weights: str | None = None
    pretrained: bool = True
    seed: int = 0
    download: bool = True


@dataclass(frozen=True)
class CodingConfig:
    """How each image is coded: quality, online-adaptation ``steps`` per tile and ``metrics``, tile size.

    ``lmbda`` codes every image at that λ instead of the quality's; ``target`` (``("psnr", dB)`` or
    ``("bpp", bits)``) searches λ per image (:mod:`oml.ratecontrol`). ``quality`` still picks the
    model's quality group (and is the coded quality when neither is given).
    """

    quality: int = 3
    steps: int = 0
    metrics: tuple[str, ...] = ("psnr",)
    tile: int = tiling.TILE
    max_pixels: int = DEFAULT_MAX_PIXELS
    lmbda: float | None = None
    target: tuple[str, float] | None = None

    def __post_init__(self) -> None:
        AdaptConfig(steps=self.steps, metrics=self.metrics)  # same checks, same messages
        tiling.check_tile_size(self.tile)
        if self.max_pixels <= 0:
            raise ValueError(f"max_pixels must be positive, got {self.max_pixels}")
        if self.lmbda is not None and self.target is not None:
            raise ValueError("give a λ or a target, not both")
        if self.lmbda is not None and not (math.isfinite(self.lmbda) and self.lmbda > 0):
            raise ValueError(f"λ must be a positive number, got {self.lmbda}")
        if self.target is not None:
            ratecontrol.Target(*self.target)  # same checks, same messages

    @property
    def adapt(self) -> AdaptConfig:
        return AdaptConfig(steps=self.steps, metrics=self.metrics)


@dataclass(frozen=True)
class RayConfig:
    """Where and how wide the job runs.

    ``address``: a Ray cluster (``None``: ``RAY_ADDRESS`` if set, else a new
    local Ray with ``num_cpus`` CPUs). ``num_workers``: shards in flight at once
    (``None``: as many as the cluster's resources allow).
    """

    address: str | None = None
    num_cpus: int | None = None
    num_workers: int | None = None
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0
    max_retries: int = 3

    def __post_init__(self) -> None:
        if self.num_workers is not None and self.num_workers < 1:
            raise ValueError(f"num_workers must be at least 1, got {self.num_workers}")
        if self.cpus_per_worker <= 0 or self.gpus_per_worker < 0 or self.max_retries < 0:
            raise ValueError("cpus_per_worker must be > 0; gpus_per_worker and max_retries >= 0")


@dataclass(frozen=True)
class CompressConfig:
    input: str
    output: str
    model: ModelConfig = ModelConfig()
    coding: CodingConfig = CodingConfig()
    ray: RayConfig = RayConfig()
    extensions: tuple[str, ...] = IMAGE_SUFFIXES
    shard_size: int = 16
    progress: bool = True

    def __post_init__(self) -> None:
        if self.shard_size < 1:
            raise ValueError(f"shard_size must be at least 1, got {self.shard_size}")


@dataclass(frozen=True)
class DecompressConfig:
    """Restore images of the archive at ``input`` as PNG files under ``output``.

    ``select``: source URIs, relative paths or glob patterns of either (empty:
    every image). ``metric``: which stored λ* set to decode with (default: the
    first). ``model``: ``None`` uses the one recorded in the archive's plan.
    ``sources``: a folder the user names that holds the original files at the
    rows' paths; ``verify`` then also checks PSNR against them. Nothing a row
    names is ever fetched.
    """

    input: str
    output: str
    select: tuple[str, ...] = ()
    verify: bool = False
    metric: str | None = None
    psnr_tolerance: float = 0.01
    sources: str | None = None
    model: ModelConfig | None = None
    ray: RayConfig = RayConfig()
    progress: bool = True


# --------------------------------------------------------------------------- results


class Failure(NamedTuple):
    """An input that could not be archived, and why (one line)."""

    source: str
    path: str
    reason: str


class Shard(NamedTuple):
    """Shard ``index`` of the sorted listing."""

    index: int
    files: tuple[storage.SourceFile, ...]


@dataclass(frozen=True)
class ShardResult:
    """What one shard task did: counts, sums for the means, failures, seconds per stage."""

    index: int
    sources: tuple[str, ...]
    images: int
    tiles: int
    coded_bytes: int
    pixels: int
    sum_bpp: float
    sum_psnr_before: float
    sum_psnr_after: float
    failures: tuple[Failure, ...]
    seconds: dict[str, float]
    parquet_bytes: int = 0
    parquet_sha256: str = ""

    def to_json(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["failures"] = [f._asdict() for f in self.failures]
        return {"format": MARKER_FORMAT, **d}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ShardResult:
        """Raises ValueError for anything but a marker of this format (damaged, forged, older)."""
        try:
            if d.get("format") != MARKER_FORMAT:
                raise ValueError(f"marker format {d.get('format')!r}, expected {MARKER_FORMAT}")
            kwargs = {f.name: d[f.name] for f in dataclasses.fields(cls)}
            kwargs["sources"] = tuple(kwargs["sources"])
            kwargs["failures"] = tuple(Failure(**f) for f in kwargs["failures"])
            return cls(**kwargs)
        except (AttributeError, KeyError, TypeError) as exc:
            raise ValueError(f"not a shard marker ({type(exc).__name__}: {exc})") from None

    def matches(self, parquet: bytes | None) -> bool:
        """Whether ``parquet`` is the file this marker committed (size and SHA-256)."""
        return parquet is not None and len(parquet) == self.parquet_bytes and schema.sha256(parquet) == self.parquet_sha256


@dataclass(frozen=True)
class CompressReport:
    """The outcome of :func:`run_compress`; ``exit_code`` is 0 only when nothing failed."""

    images: int
    archived: int
    failed: int
    shards: int
    shards_skipped: int
    shards_written: int
    shards_failed: tuple[tuple[int, str], ...]
    summary_uri: str
    manifest_uri: str
    summary: dict[str, Any] = field(repr=False)

    @property
    def exit_code(self) -> int:
        return 0 if self.failed == 0 and not self.shards_failed else 1


class DecodedImage(NamedTuple):
    """One restored image: ``status`` is ``ok``, ``failed`` or ``mismatch`` (verify found a difference)."""

    source: str
    path: str
    output: str
    status: str
    reason: str
    checks: dict[str, Any]


@dataclass(frozen=True)
class DecompressReport:
    selected: int
    restored: int
    failed: int
    mismatched: int
    summary_uri: str
    results: tuple[DecodedImage, ...] = field(repr=False)

    @property
    def exit_code(self) -> int:
        return 0 if self.failed == 0 and self.mismatched == 0 else 1


# --------------------------------------------------------------------------- archive layout


def plan_uri(root: str) -> str:
    return storage.join(root, "plan.json")


def shard_uri(root: str, index: int) -> str:
    return storage.join(root, "shards", f"shard-{index:06d}.parquet")


def marker_uri(root: str, index: int) -> str:
    return storage.join(root, "shards", f"shard-{index:06d}.done.json")


def make_shards(files: Sequence[storage.SourceFile], shard_size: int) -> list[Shard]:
    """Cut the sorted listing every ``shard_size`` files."""
    return [Shard(i, tuple(files[start : start + shard_size])) for i, start in enumerate(range(0, len(files), shard_size))]


def listing_sha256(files: Sequence[storage.SourceFile]) -> str:
    digest = hashlib.sha256()
    for f in files:
        digest.update(f"{f.relative_path}\0{f.size}\n".encode())
    return digest.hexdigest()


# --------------------------------------------------------------------------- models


_MODEL_CACHE: dict[tuple, VariableRateModel] = {}


def get_model(cfg: ModelConfig, quality: int, device: str = "cpu") -> VariableRateModel:
    """The model for ``quality``'s group, built once per process (one entry kept, so memory stays bounded)."""
    key = (cfg, quality_group(cfg.name, quality), device)
    if key not in _MODEL_CACHE:
        _MODEL_CACHE.clear()
        if not cfg.pretrained and cfg.weights is None:
            torch.manual_seed(cfg.seed)  # random weights: identical on every worker
        model = load_model(cfg.name, quality, weights=cfg.weights, pretrained=cfg.pretrained, download=cfg.download)
        _MODEL_CACHE[key] = model.to(device)
    return _MODEL_CACHE[key]


def _device(gpus: float) -> str:
    """A worker given a GPU by Ray runs the transforms there (entropy coding stays on the CPU)."""
    return "cuda" if gpus > 0 and torch.cuda.is_available() else "cpu"


# --------------------------------------------------------------------------- compression (workers)


def encode_image(model: VariableRateModel, image: torch.Tensor, coding: CodingConfig) -> tuple[codec.Header, bytes, list[dict]]:
    """Code a uint8 image ``(3, H, W)``: (its header, its ``oml`` bytes, one Parquet struct per tile).

    One :func:`oml.codec.encode` call, so tiles are batched on a GPU as the codec
    chooses; the codec keeps memory bounded by its tile batch.
    """
    if coding.target is not None:
        enc = ratecontrol.encode_to_target(model, image, ratecontrol.Target(*coding.target), coding.adapt, coding.tile).encoded
    elif coding.lmbda is not None:
        enc = codec.encode(model, image, lmbda=coding.lmbda, adapt_config=coding.adapt, tile_size=coding.tile)
    else:
        enc = codec.encode(model, image, quality=coding.quality, adapt_config=coding.adapt, tile_size=coding.tile)
    header, records = codec.read(enc.data)
    parts = tiling.split(enc.reconstruction, [t.tile for t in enc.tiles])
    return header, enc.data, [schema.tile_row(s, r, p) for s, r, p in zip(enc.tiles, records, parts)]


@dataclass(frozen=True)
class ShardEncoder:
    """Picklable callable run by a Ray task: one shard of sources → its Parquet file and done marker.

    The model is loaded on a worker's first shard and reused for the next ones.
    ``fingerprint`` (hex) is the driver's model fingerprint: a worker whose
    weights differ refuses to code rather than mix models in one archive.
    """

    output: str
    model: ModelConfig
    coding: CodingConfig
    fingerprint: str
    threads: int = 1
    gpus: float = 0.0

    def __call__(self, shard: Shard) -> ShardResult:
        torch.set_num_threads(self.threads)
        model = get_model(self.model, self.coding.quality, _device(self.gpus))
        if model.fingerprint(self.coding.quality).hex() != self.fingerprint:
            raise RuntimeError(
                f"this worker's {self.model.name} weights (fingerprint {model.fingerprint(self.coding.quality).hex()}) "
                f"differ from the archive's ({self.fingerprint}); install the same weights on every node"
            )
        seconds = {"read": 0.0, "decode": 0.0, "code": 0.0, "write": 0.0}
        rows, failures = [], []
        for f in shard.files:
            row, reason = self._one(model, f, seconds)
            if row is None:
                failures.append(Failure(f.uri, f.relative_path, reason))
            else:
                rows.append(row)
        start = time.perf_counter()
        parquet = schema.to_parquet(rows)
        storage.write_bytes(shard_uri(self.output, shard.index), parquet)
        seconds["write"] += time.perf_counter() - start
        result = ShardResult(
            index=shard.index,
            sources=tuple(f.relative_path for f in shard.files),
            images=len(rows),
            tiles=sum(len(r["tiles"]) for r in rows),
            coded_bytes=sum(r["coded_bytes"] for r in rows),
            pixels=sum(r["width"] * r["height"] for r in rows),
            sum_bpp=sum(r["bpp"] for r in rows),
            sum_psnr_before=sum(r["psnr_before"] for r in rows),
            sum_psnr_after=sum(r["psnr_after"] for r in rows),
            failures=tuple(failures),
            seconds={k: round(v, 4) for k, v in seconds.items()},
            parquet_bytes=len(parquet),
            parquet_sha256=schema.sha256(parquet),
        )
        storage.write_json(marker_uri(self.output, shard.index), result.to_json())  # the commit, always last
        return result

    def _one(self, model: VariableRateModel, f: storage.SourceFile, seconds: dict[str, float]) -> tuple[dict | None, str]:
        """One source → (its row, "") or (None, the reason it failed)."""
        clock = _Clock(seconds)
        try:
            with clock("read"):
                data = storage.read_bytes(f.uri)
            with clock("decode"):
                image = decode_image(data, max_pixels=self.coding.max_pixels)
            with clock("code"):
                header, coded, tiles = encode_image(model, image, self.coding)
        except _PERMANENT_READ_ERRORS as exc:
            return None, f"cannot read: {type(exc).__name__}: {exc}"
        except ImageDecodeError as exc:
            return None, str(exc)
        except (ValueError, codec.CodecError) as exc:
            return None, f"cannot code: {exc}"
        return schema.image_row(f.uri, f.relative_path, data, header, coded, tiles), ""


class _Clock:
    """``with clock("stage"):`` adds the block's wall time to ``seconds["stage"]``."""

    def __init__(self, seconds: dict[str, float]) -> None:
        self.seconds = seconds

    @contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[stage] = self.seconds.get(stage, 0.0) + time.perf_counter() - start


def _apply(func: Callable[[Any], Any], item: Any) -> Any:
    """The Ray task: one callable (a :class:`ShardEncoder`, a :class:`ShardDecoder`) on one item."""
    return func(item)


# --------------------------------------------------------------------------- Ray


@contextmanager
def ray_session(cfg: RayConfig) -> Iterator[Any]:
    """Use the Ray already initialised here, else connect (address / ``RAY_ADDRESS``) or start a local one."""
    try:
        import ray
    except ImportError as exc:
        raise ImportError("the archiving pipeline needs Ray: pip install 'oml-archive[pipeline]'") from exc
    if ray.is_initialized():
        yield ray
        return
    if cfg.address or os.environ.get("RAY_ADDRESS"):
        ray.init(address=cfg.address, log_to_driver=True)
        reaper = None
    else:
        reaper = reaper_mod.watch()  # stops the local instance if this driver is killed
        try:
            ray.init(num_cpus=cfg.num_cpus, include_dashboard=False, log_to_driver=True)
        except BaseException:
            if reaper is not None:
                reaper.terminate()
            raise
    try:
        yield ray
    finally:
        ray.shutdown()
        if reaper is not None:
            reaper.terminate()
            reaper.wait()


def _run_tasks(
    ray: Any,
    cfg: RayConfig,
    func: Callable[[Any], Any],
    items: Sequence[Any],
    on_done: Callable[[Any], None],
    on_error: Callable[[Any, str], None],
) -> None:
    """Run ``func(item)`` as Ray tasks, at most ``cfg.num_workers`` at once; report each outcome as it arrives."""
    remote = ray.remote(_apply).options(
        num_cpus=cfg.cpus_per_worker,
        num_gpus=cfg.gpus_per_worker,
        max_retries=cfg.max_retries,
        retry_exceptions=[OSError],
    )
    limit = cfg.num_workers or len(items)
    func_ref = ray.put(func)
    queue, running = list(items), {}
    while queue or running:
        while queue and len(running) < limit:
            item = queue.pop(0)
            running[remote.remote(func_ref, item)] = item
        ready, _ = ray.wait(list(running), num_returns=1)
        item = running.pop(ready[0])
        try:
            on_done(ray.get(ready[0]))
        except ray.exceptions.RayError as exc:
            on_error(item, _one_line(exc))


def _one_line(exc: BaseException) -> str:
    cause = getattr(exc, "cause", None)
    if isinstance(cause, BaseException):
        exc = cause
    lines = [line for line in str(exc).strip().splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[-1] if lines else ''}".strip()


# --------------------------------------------------------------------------- progress


class Progress:
    """A tqdm bar on a terminal, else one line at most every ``interval`` seconds (and a last one)."""

    def __init__(self, label: str, total: int, done: int, enabled: bool, interval: float = 10.0) -> None:
        self.label, self.total, self.done, self.enabled, self.interval = label, total, done, enabled, interval
        self.failed = self.tiles = 0
        self.sum_bpp = self.sum_delta = 0.0
        self.coded = 0
        self.start = self.last = time.monotonic()
        self.bar = None
        if enabled and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=done, desc=label, unit="img", file=sys.stderr)

    def update(self, images: int, failed: int, tiles: int = 0, sum_bpp: float = 0.0, sum_delta: float = 0.0) -> None:
        self.done += images + failed
        self.failed += failed
        self.tiles += tiles
        self.coded += images
        self.sum_bpp += sum_bpp
        self.sum_delta += sum_delta
        if self.bar is not None:
            self.bar.update(images + failed)
            self.bar.set_postfix_str(self._stats(), refresh=False)
        elif self.enabled and time.monotonic() - self.last >= self.interval:
            self._print()

    def _stats(self) -> str:
        text = f"{self.failed} failed"
        if self.tiles:
            text += f", {self.tiles / max(time.monotonic() - self.start, 1e-9):.2f} tiles/s"
        if self.sum_bpp:
            text += f", mean {self.sum_bpp / self.coded:.4f} bpp, mean ΔPSNR {self.sum_delta / self.coded:+.3f} dB"
        return text

    def _print(self) -> None:
        self.last = time.monotonic()
        print(f"{self.label}: {self.done}/{self.total} images, {self._stats()}", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        elif self.enabled:
            self._print()


# --------------------------------------------------------------------------- compression (driver)


def _plan(cfg: CompressConfig, files: Sequence[storage.SourceFile], fingerprint: str) -> dict[str, Any]:
    return {
        "format": PLAN_FORMAT,
        "input": storage.redact(storage.normalize(cfg.input)),
        "model": dataclasses.asdict(cfg.model),
        # options left unset are left out, so archives started before they existed still resume
        "coding": {k: v for k, v in dataclasses.asdict(cfg.coding).items() if v is not None},
        "fingerprint": fingerprint,
        "extensions": sorted(e.lower() for e in cfg.extensions),
        "shard_size": cfg.shard_size,
        "files": len(files),
        "listing_sha256": listing_sha256(files),
    }


def _check_plan(old: dict[str, Any], new: dict[str, Any], root: str) -> None:
    """A re-run must describe the same archive; otherwise say what differs."""
    changed = [k for k in new if k != "input" and json.loads(json.dumps(old.get(k))) != json.loads(json.dumps(new[k]))]
    if not changed:
        return
    detail = ", ".join(changed)
    if "listing_sha256" in changed:
        detail += f" (the input listing now has {new['files']} files; {old.get('files')} when the archive was started)"
    raise ValueError(
        f"{storage.redact(root)} is an archive started with other settings: {detail} differ. "
        "Re-run with the original settings to resume it, or write to a new output."
    )


class MarkerCheck(NamedTuple):
    """A done marker read with its Parquet file: both when the file is the one the marker
    committed, else ``None`` and why not."""

    result: ShardResult | None
    parquet: bytes | None
    why: str


def read_marker(uri: str) -> MarkerCheck:
    try:
        result = ShardResult.from_json(storage.read_json(uri))
    except (OSError, ValueError) as exc:
        return MarkerCheck(None, None, f"damaged marker {posixpath.basename(uri)}: {exc}")
    try:
        parquet = storage.read_bytes(uri[: -len(".done.json")] + ".parquet")
    except OSError:
        parquet = None
    if not result.matches(parquet):
        what = "missing" if parquet is None else f"{len(parquet)} bytes, not the {result.parquet_bytes} committed, or another hash"
        return MarkerCheck(None, None, f"shard {result.index}: its Parquet file is {what}")
    return MarkerCheck(result, parquet, "")


def _committed(root: str, shards: Sequence[Shard]) -> dict[int, ShardResult]:
    """Shards whose done marker is intact and whose Parquet file is the one it committed; any other
    shard (no marker, damaged marker, truncated or missing file) is redone, which repairs it."""
    found = {}
    for uri in storage.glob(storage.join(root, "shards", "shard-*.done.json")):
        result = read_marker(uri).result
        if result is not None and result.index < len(shards) and result.sources == tuple(f.relative_path for f in shards[result.index].files):
            found[result.index] = result
    return found


def _fingerprint(cfg: CompressConfig) -> str:
    """The model's fingerprint; also checks, before any work, that it can code as asked."""
    model = get_model(cfg.model, cfg.coding.quality)
    if cfg.coding.target is not None:
        ratecontrol.check_model(model)
    if cfg.coding.lmbda is not None:
        model.resolve(lmbda=cfg.coding.lmbda)  # out of range: one error now, not one per image
    return model.fingerprint(cfg.coding.quality).hex()


@dataclass
class _Run:
    """What one :func:`run_compress` call found committed and did."""

    shards: list[Shard]
    done: dict[int, ShardResult]
    skipped: int
    written: list[ShardResult] = field(default_factory=list)
    unfinished: list[tuple[int, str]] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def results(self) -> list[ShardResult]:
        return [self.done[i] for i in sorted(self.done)]

    @property
    def images(self) -> int:
        return sum(len(s.files) for s in self.shards)

    @property
    def archived(self) -> int:
        return sum(r.images for r in self.done.values())


def run_compress(config: CompressConfig, encoder: Callable[[Shard], ShardResult] | None = None) -> CompressReport:
    """Archive every image under ``config.input`` into ``config.output``, resuming a previous run.

    ``encoder`` replaces :class:`ShardEncoder` (tests inject faults this way).

    Raises:
        ValueError: no inputs, or the output is an archive made with other settings.
    """
    root = storage.normalize(config.output)
    files = storage.list_files(config.input, config.extensions)
    if not files:
        raise ValueError(f"no input images under {storage.redact(config.input)} (looked for {', '.join(config.extensions)})")
    shards = make_shards(files, config.shard_size)
    fingerprint = _fingerprint(config)
    plan = _plan(config, files, fingerprint)
    if storage.exists(plan_uri(root)):
        _check_plan(storage.read_json(plan_uri(root)), plan, root)
    else:
        storage.write_json(plan_uri(root), plan)
    storage.remove_stale_temporaries(storage.join(root, "shards"))
    done = _committed(root, shards)
    run = _Run(shards, done, skipped=len(done))
    pending = [s for s in shards if s.index not in done]
    threads = max(1, int(config.ray.cpus_per_worker))
    encoder = encoder or ShardEncoder(root, config.model, config.coding, fingerprint, threads, config.ray.gpus_per_worker)
    progress = Progress("compress", len(files), sum(len(shards[i].files) for i in done), config.progress)

    def finished(result: ShardResult) -> None:
        run.done[result.index] = result
        run.written.append(result)
        progress.update(result.images, len(result.failures), result.tiles, result.sum_bpp, result.sum_psnr_after - result.sum_psnr_before)

    def crashed(shard: Shard, reason: str) -> None:
        run.unfinished.append((shard.index, reason))
        progress.update(0, len(shard.files))

    start = time.perf_counter()
    if pending:
        with ray_session(config.ray) as ray:
            _run_tasks(ray, config.ray, encoder, pending, finished, crashed)
    run.seconds = time.perf_counter() - start
    run.unfinished.sort()
    progress.close()
    return _finish_compress(config, root, run)


def _finish_compress(config: CompressConfig, root: str, run: _Run) -> CompressReport:
    """Write the manifest and the summary from every committed marker; build the report."""
    manifest = {
        "format": "oml-archive-manifest/1",
        "images": run.images,
        "archived": run.archived,
        "failed": [{"shard": r.index, **f._asdict()} for r in run.results for f in r.failures],
        "unfinished_shards": [
            {"shard": i, "reason": reason, "sources": [f.uri for f in run.shards[i].files]} for i, reason in run.unfinished
        ],
    }
    manifest_uri, summary_uri = storage.join(root, "manifest.json"), storage.join(root, "summary.json")
    storage.write_json(manifest_uri, manifest)
    summary = _summary(config, root, run)
    storage.write_json(summary_uri, summary)
    return CompressReport(
        images=run.images,
        archived=run.archived,
        failed=run.images - run.archived,
        shards=len(run.shards),
        shards_skipped=run.skipped,
        shards_written=len(run.written),
        shards_failed=tuple(run.unfinished),
        summary_uri=summary_uri,
        manifest_uri=manifest_uri,
        summary=summary,
    )


def _mean(total: float, n: int) -> float | None:
    return total / n if n else None


def _rate(count: int, seconds: float) -> float | None:
    return count / seconds if count and seconds > 0 else None


def _summary(config: CompressConfig, root: str, run: _Run) -> dict[str, Any]:
    results, n = run.results, run.archived
    run_images = sum(r.images + len(r.failures) for r in run.written)
    run_tiles = sum(r.tiles for r in run.written)
    return {
        "format": "oml-archive-summary/1",
        "input": storage.redact(storage.normalize(config.input)),
        "output": storage.redact(root),
        "model": config.model.name,
        "quality": config.coding.quality,
        **({"lmbda": config.coding.lmbda} if config.coding.lmbda is not None else {}),
        **({"target": list(config.coding.target)} if config.coding.target is not None else {}),
        "steps": config.coding.steps,
        "metrics": list(config.coding.metrics),
        "images": run.images,
        "archived": n,
        "failed": run.images - n,
        "tiles": sum(r.tiles for r in results),
        "coded_bytes": sum(r.coded_bytes for r in results),
        "mean_bpp": _mean(sum(r.sum_bpp for r in results), n),
        "mean_psnr_before": _mean(sum(r.sum_psnr_before for r in results), n),
        "mean_psnr_after": _mean(sum(r.sum_psnr_after for r in results), n),
        "mean_delta_psnr": _mean(sum(r.sum_psnr_after - r.sum_psnr_before for r in results), n),
        "shards": {
            "total": len(run.shards),
            "committed": len(results),
            "skipped": run.skipped,
            "written": len(run.written),
            "failed": len(run.unfinished),
        },
        "last_run": {
            "seconds": round(run.seconds, 3),
            "images": run_images,
            "tiles": run_tiles,
            "images_per_second": _rate(run_images, run.seconds),
            "tiles_per_second": _rate(run_tiles, run.seconds),
            "worker_seconds": {k: round(sum(r.seconds.get(k, 0.0) for r in run.written), 3) for k in ("read", "decode", "code", "write")},
            "num_workers": config.ray.num_workers,
        },
    }


# --------------------------------------------------------------------------- decompression


class DecodeJob(NamedTuple):
    """The rows of one shard to restore: relative path → output URI."""

    shard: str
    outputs: dict[str, str]


def _matches(row_source: str, row_path: str, patterns: Sequence[str]) -> bool:
    return any(
        fnmatch.fnmatchcase(row_path, p) or fnmatch.fnmatchcase(row_source, p) or row_source == p or row_path == p
        for p in patterns
    )


def png_names(paths: Sequence[str]) -> dict[str, str]:
    """Relative output name per relative source path, all distinct (:func:`pipeline.walk.output_names`)."""
    return output_names(paths, ".png")


@dataclass(frozen=True)
class ShardDecoder:
    """Picklable callable run by a Ray task: restore the selected rows of one shard as PNG files."""

    model: ModelConfig
    verify: bool = False
    metric: str | None = None
    psnr_tolerance: float = 0.01
    threads: int = 1
    sources: str | None = None

    def __call__(self, job: DecodeJob) -> list[DecodedImage]:
        torch.set_num_threads(self.threads)
        table = schema.read_parquet(storage.read_bytes(job.shard))
        return [self._one(row, job.outputs[row["path"]]) for row in table.to_pylist() if row["path"] in job.outputs]

    def _one(self, row: dict[str, Any], output: str) -> DecodedImage:
        def result(status: str, reason: str = "", **checks: Any) -> DecodedImage:
            return DecodedImage(row["source"], row["path"], output, status, reason, checks)

        data = schema.coded_bytes(row)
        if schema.sha256(data) != row["coded_sha256"]:  # always: a damaged row must not restore as wrong pixels
            return result("failed", "archive record damaged: coded checksum differs")
        model_cfg = dataclasses.replace(self.model, name=row["model"], download=False)  # never fetch what a row names
        try:
            model = get_model(model_cfg, row["quality"] or 1)
            image = codec.decode(model, data, metric=self.metric)
        except (codec.CodecError, ValueError, ModelUnavailableError) as exc:
            return result("failed", f"cannot decode: {exc}")
        storage.write_bytes(output, encode_png(image))
        if not self.verify:
            return result("ok")
        stored = image if codec.select_set(schema.header_of(row), self.metric) == 0 else codec.decode(model, data)
        return self._verify(row, stored, result)

    def _verify(self, row: dict[str, Any], image: torch.Tensor, result: Callable[..., DecodedImage]) -> DecodedImage:
        """Compare with compression time, from the archive's own records: the coded bytes' hash
        (checked before decoding), the symbols (format 2: every tile's check), each tile's
        reconstruction hash, and, when the user named a ``sources`` folder, PSNR against the
        source file at the row's path there. A row's ``source`` URI is never opened."""
        grid = schema.tile_grid(row)
        parts = tiling.split(image, grid)
        bit_exact = all(schema.pixels_sha256(p) == t["reconstruction_sha256"] for p, t in zip(parts, row["tiles"]))
        if not bit_exact and row["format_version"] < 2:
            return result("mismatch", "reconstruction differs from compression time (format 1: no symbol check)", bit_exact=False)
        if self.sources is None:
            return result("ok", bit_exact=bit_exact, checks_source="no --sources given")
        try:
            source = storage.read_bytes(storage.join(self.sources, storage.safe_relative(row["path"])))
        except (OSError, ValueError):
            source = None
        if source is None or schema.sha256(source) != row["source_sha256"]:
            why = "source unavailable" if source is None else "source changed since compression"
            return result("ok", checks_source=why, bit_exact=bit_exact)
        original = decode_image(source, max_pixels=max(DEFAULT_MAX_PIXELS, row["width"] * row["height"]))
        errors = [abs(schema.psnr(p, o) - t["psnr_after"]) for p, o, t in zip(parts, tiling.split(original, grid), row["tiles"])]
        worst = max(0.0 if math.isnan(e) else e for e in errors)  # NaN: both PSNRs are inf (exact tiles)
        if worst > self.psnr_tolerance:
            reason = f"PSNR differs from compression time by up to {worst:.4f} dB"
            return result("mismatch", reason, bit_exact=bit_exact, max_psnr_error=worst)
        return result("ok", bit_exact=bit_exact, max_psnr_error=worst)


def _decode_jobs(root: str, select: Sequence[str], output: str, expected_shards: int) -> tuple[list[DecodeJob], list[DecodedImage]]:
    """Selected rows per committed shard, with their output URIs; and what is refused before
    decoding: a path that would leave the output folder, an output that is the row's source, a
    shard whose marker or Parquet file is damaged or missing (named, so nothing goes unreported)."""
    chosen: list[tuple[str, str, str]] = []
    refused: list[DecodedImage] = []
    committed: set[int] = set()
    for marker in storage.glob(storage.join(root, "shards", "shard-*.done.json")):
        check = read_marker(marker)
        if check.result is None:
            refused.append(DecodedImage("", posixpath.basename(marker), "", "failed", f"not restored: {check.why}; re-run compress to repair it", {}))
            continue
        committed.add(check.result.index)
        shard = shard_uri(root, check.result.index)
        try:  # the bytes just verified; a file that matches its marker and still does not parse is named too
            table = schema.read_parquet(check.parquet, columns=["source", "path"])
        except (OSError, ValueError) as exc:  # pyarrow's errors derive from these
            refused.append(DecodedImage("", posixpath.basename(shard), "", "failed", f"not restored: its Parquet file cannot be read ({type(exc).__name__}: {exc})", {}))
            continue
        for source, path in zip(table.column("source").to_pylist(), table.column("path").to_pylist()):
            if select and not _matches(source, path, select):
                continue
            try:
                storage.safe_relative(path)
            except ValueError as exc:
                refused.append(DecodedImage(source, path, "", "failed", f"not restored: {exc} (damaged or forged archive row)", {}))
                continue
            chosen.append((shard, source, path))
    for index in sorted(set(range(expected_shards)) - committed):
        refused.append(DecodedImage("", f"shard-{index:06d}", "", "failed", "not restored: shard not committed (compression unfinished or its marker lost); re-run compress", {}))
    names = png_names([p for _, _, p in chosen])
    jobs: dict[str, dict[str, str]] = {}
    for shard, source, path in chosen:
        target = storage.join(output, names[path])
        if target == source:
            refused.append(DecodedImage(source, path, target, "failed", "not restored: the output would overwrite its source", {}))
            continue
        jobs.setdefault(shard, {})[path] = target
    return [DecodeJob(s, o) for s, o in jobs.items()], refused


def run_decompress(config: DecompressConfig, decoder: Callable[[DecodeJob], list[DecodedImage]] | None = None) -> DecompressReport:
    """Restore the archive's images (all, or those ``config.select`` names) as PNG files.

    Raises:
        ValueError: ``config.input`` is not an archive, or the selection matches nothing.
    """
    root = storage.normalize(config.input)
    if not storage.exists(plan_uri(root)):
        raise ValueError(f"{storage.redact(root)} is not an oml archive (no plan.json)")
    plan = storage.read_json(plan_uri(root))
    model = config.model or ModelConfig(**plan["model"])
    output = storage.normalize(config.output)
    if output == plan.get("input"):
        raise ValueError(f"{storage.redact(output)} is the archive's input folder: restored images would replace the originals; choose another output")
    expected_shards = -(-int(plan.get("files", 0)) // max(1, int(plan.get("shard_size", 1))))
    jobs, refused = _decode_jobs(root, config.select, output, expected_shards)
    if not jobs and not refused:
        raise ValueError("no archived image matches the selection" if config.select else "the archive has no images yet")
    sources = storage.normalize(config.sources) if config.sources else None
    decoder = decoder or ShardDecoder(model, config.verify, config.metric, config.psnr_tolerance, max(1, int(config.ray.cpus_per_worker)), sources)
    total = sum(len(j.outputs) for j in jobs) + len(refused)
    progress = Progress("decompress", total, 0, config.progress)
    results: list[DecodedImage] = list(refused)
    progress.update(0, len(refused))

    def finished(batch: list[DecodedImage]) -> None:
        results.extend(batch)
        progress.update(sum(r.status == "ok" for r in batch), sum(r.status != "ok" for r in batch))

    def crashed(job: DecodeJob, reason: str) -> None:
        results.extend(DecodedImage("", p, o, "failed", reason, {}) for p, o in job.outputs.items())
        progress.update(0, len(job.outputs))

    start = time.perf_counter()
    with ray_session(config.ray) as ray:
        _run_tasks(ray, config.ray, decoder, jobs, finished, crashed)
    elapsed = time.perf_counter() - start
    progress.close()
    results.sort(key=lambda r: r.path)
    counts = {s: sum(r.status == s for r in results) for s in ("ok", "failed", "mismatch")}
    summary_uri = storage.join(output, "decompress-summary.json")
    storage.write_json(
        summary_uri,
        {
            "format": "oml-decompress-summary/1",
            "archive": storage.redact(root),
            "selected": total,
            "restored": counts["ok"],
            "failed": counts["failed"],
            "mismatched": counts["mismatch"],
            "verify": config.verify,
            "seconds": round(elapsed, 3),
            "problems": [r._asdict() for r in results if r.status != "ok"],
        },
    )
    return DecompressReport(total, counts["ok"], counts["failed"], counts["mismatch"], summary_uri, tuple(results))
