"""Frozen settings of an archive job: which model, how each image is coded, where Ray runs, what to archive or restore."""

from __future__ import annotations

import math
from dataclasses import dataclass

from oml import ratecontrol, tiling
from oml.adapt import AdaptConfig
from oml.imageio import DEFAULT_MAX_PIXELS, IMAGE_SUFFIXES
from oml.models.zoo import DEFAULT_MODEL
from oml.refine import RefineConfig

UNIT_TILES = 64
MIN_UNITS = 32
MIN_UNIT_TILES = 16
"""A small collection is split into up to ``MIN_UNITS`` units for the workers (a power of two of
them), but never into units of fewer tiles than this: each unit carries about 5 KB of Parquet
footers, page headers and marker, which made units of one Kodak image (2 tiles) +23 % of the coded
bytes (docs/ARCHIVE.md, "Units of tiles")."""


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
    model's quality group (and is the coded quality when neither is given). ``refine``: latent
    refinement iterations per tile (:mod:`oml.refine`). ``quick``: quick online adaptation
    (:mod:`oml.quick`) instead of ``steps`` iterations of the paper's search. ``to_srgb``: convert
    the colours of images whose ICC profile is not sRGB (refused otherwise; :mod:`oml.imageio`).
    """

    quality: int = 3
    steps: int = 0
    metrics: tuple[str, ...] = ("psnr",)
    tile: int = tiling.TILE
    max_pixels: int = DEFAULT_MAX_PIXELS
    lmbda: float | None = None
    target: tuple[str, float] | None = None
    refine: int = 0
    to_srgb: bool = False
    quick: bool = False
    metadata_limit: int | None = None  # bytes of metadata blocks kept per image (None: oml.metadata.DEFAULT_LIMIT)

    def __post_init__(self) -> None:
        if self.metadata_limit is not None and self.metadata_limit < 0:
            raise ValueError(f"the metadata limit must be 0 or more bytes, got {self.metadata_limit}")
        self.adapt  # same checks, same messages
        RefineConfig(self.refine)
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
        return AdaptConfig(steps=self.steps, metrics=self.metrics, quick=self.quick)

    @property
    def search(self) -> RefineConfig:
        return RefineConfig(self.refine)

    @property
    def whole_images(self) -> bool:
        """Whether an image must be coded by one unit: a per-image λ search needs all its tiles."""
        return self.target is not None


@dataclass(frozen=True)
class RayConfig:
    """Where and how wide the job runs.

    ``address``: a Ray cluster (``None``: ``RAY_ADDRESS`` if set, else a new
    local Ray with ``num_cpus`` CPUs). ``num_workers``: units in flight at once
    (``None``: as many as the cluster's resources allow). ``resource_wait``: seconds to wait for an
    autoscaler to add a node that can run a task (CPUs and GPUs per worker) when none can yet; a
    request that no node and no node type can ever hold fails at once
    (:func:`pipeline.archive.runner.placement`). ``shared_path``: the user says that the local paths
    given (input, output, sources) are the same storage on every node of the cluster (an NFS mount,
    a shared volume); without it a cluster of several nodes refuses them
    (:func:`pipeline.archive.runner.check_shared_paths`).
    """

    address: str | None = None
    num_cpus: int | None = None
    num_workers: int | None = None
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0
    max_retries: int = 3
    resource_wait: float = 600.0
    shared_path: bool = False

    def __post_init__(self) -> None:
        if self.num_workers is not None and self.num_workers < 1:
            raise ValueError(f"num_workers must be at least 1, got {self.num_workers}")
        if self.num_cpus is not None and self.num_cpus < 1:
            raise ValueError(f"num_cpus must be at least 1, got {self.num_cpus}")
        if not (self.cpus_per_worker > 0 and self.gpus_per_worker >= 0 and self.max_retries >= 0):  # NaN fails too
            raise ValueError("cpus_per_worker must be > 0; gpus_per_worker and max_retries >= 0")
        if not self.resource_wait >= 0:
            raise ValueError(f"resource_wait must be 0 or more seconds, got {self.resource_wait}")


@dataclass(frozen=True)
class CompressConfig:
    """Archive every image under ``input`` into ``output``.

    ``unit_tiles``: tiles per unit of work, at most; a collection of fewer than ``min_units`` ×
    ``unit_tiles`` tiles is cut into up to ``min_units`` smaller units instead (a power of two of
    them, so that they share evenly among 2, 4, 8 … workers), so a few images still keep several
    workers busy, but of no fewer than ``min_unit_tiles`` tiles, so that the units' container
    overhead stays small (:func:`pipeline.archive.plan.make_units`).
    """

    input: str
    output: str
    model: ModelConfig = ModelConfig()
    coding: CodingConfig = CodingConfig()
    ray: RayConfig = RayConfig()
    extensions: tuple[str, ...] = IMAGE_SUFFIXES
    unit_tiles: int = UNIT_TILES
    min_units: int = MIN_UNITS
    min_unit_tiles: int = MIN_UNIT_TILES
    progress: bool = True

    def __post_init__(self) -> None:
        _named(input=self.input, output=self.output)
        if self.unit_tiles < 1 or self.min_units < 1 or self.min_unit_tiles < 1:
            raise ValueError(
                f"unit_tiles, min_units and min_unit_tiles must be at least 1, got {self.unit_tiles}, {self.min_units} and {self.min_unit_tiles}"
            )


@dataclass(frozen=True)
class DecompressConfig:
    """Restore images of the archive at ``input`` as PNG files under ``output``.

    ``select``: source URIs, relative paths or glob patterns of either (empty:
    every image). ``metric``: which stored λ* set to decode with (default: the
    first). ``model``: ``None`` uses the one recorded in the archive's plan.
    ``sources``: a folder the user names that holds the original files at the
    rows' paths; ``verify`` then also checks PSNR against them. Nothing a row
    names is ever fetched. ``region`` (left, top, width, height in pixels):
    restore only that window of the one selected image, decoding only the tiles
    it overlaps. ``band_tiles``: an image of more tiles than this is restored in
    bands of whole tile rows, about that many tiles each, one Ray task per band,
    and written as one PNG by a streaming writer (:mod:`pipeline.archive.pngstream`).
    ``overwrite``: replace an existing output file that holds other bytes (default: leave it, and
    report the image as failed; one that holds the very bytes restored is left either way).
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
    region: tiling.Region | None = None
    band_tiles: int = 64
    overwrite: bool = False

    def __post_init__(self) -> None:
        _named(input=self.input, output=self.output, sources=self.sources)
        if not (math.isfinite(self.psnr_tolerance) and self.psnr_tolerance >= 0):
            raise ValueError(f"--psnr-tolerance must be a finite number >= 0 (dB), got {self.psnr_tolerance}")
        if self.band_tiles < 1:
            raise ValueError("--band-tiles must be 1 or more")
        if self.region is not None and self.verify:
            raise ValueError("--verify checks whole images; leave out --region to verify")


def _named(**locations: str | None) -> None:
    """ValueError for a location given as the empty string ('' would mean the current folder)."""
    for flag, value in locations.items():
        if value == "":
            raise ValueError(f"--{flag} is empty (''): name a folder or URI")
