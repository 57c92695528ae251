"""Archive an image collection with the codec on Ray, and restore it.

Layout of an archive at ``OUT`` (local folder or ``s3://bucket/prefix``), in ``docs/ARCHIVE.md``::

    OUT/plan.copy.json                     the plan again, with the SHA-256 of plan.json's bytes; written first
    OUT/plan.json                          settings, listing fingerprint, every input's size and SHA-256
    OUT/units/unit-000000.tiles.parquet    one row per coded tile (pipeline.archive.schema.TILE_SCHEMA)
    OUT/units/unit-000000.images.parquet   one row per image whose first tile the unit coded
    OUT/units/unit-000000.done.json        commit marker, written last, naming both files' size and SHA-256
    OUT/manifest.json                      every failed input with its reason
    OUT/summary.json                       totals of the archive and of the last run

Modules, one responsibility each: :mod:`.config` (frozen settings), :mod:`.plan` (header reads,
units of tiles), :mod:`.layout` (where files live, what makes a unit committed), :mod:`.encoder`
and :mod:`.decoder` (what a Ray task runs), :mod:`.runner` (Ray session, bounded task pool),
:mod:`.progress`, :mod:`.compress` and :mod:`.decompress` (the drivers).
"""

import warnings

# CompressAI's import triggers a torch deprecation warning that means nothing to a user (in every worker).
warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*", category=FutureWarning)

from oml.imageio import IMAGE_SUFFIXES
from pipeline.archive.compress import CompressReport, run_compress
from pipeline.archive.config import CodingConfig, CompressConfig, DecompressConfig, ModelConfig, RayConfig
from pipeline.archive.decoder import DecodedImage, DecodeJob, ImageDecoder, TileSource
from pipeline.archive.decompress import DecompressReport, png_names, run_decompress
from pipeline.archive.encoder import UnitEncoder, encode_rect, get_model
from pipeline.archive.layout import PieceResult, UnitResult, read_marker, unit_uri
from pipeline.archive.plan import Failure, Piece, PlannedImage, Unit, make_units
from pipeline.archive.runner import ray_session

__all__ = [
    "IMAGE_SUFFIXES",
    "CodingConfig",
    "CompressConfig",
    "CompressReport",
    "DecodeJob",
    "DecodedImage",
    "DecompressConfig",
    "DecompressReport",
    "Failure",
    "ImageDecoder",
    "ModelConfig",
    "Piece",
    "PieceResult",
    "PlannedImage",
    "RayConfig",
    "TileSource",
    "Unit",
    "UnitEncoder",
    "UnitResult",
    "encode_rect",
    "get_model",
    "make_units",
    "png_names",
    "ray_session",
    "read_marker",
    "run_compress",
    "run_decompress",
    "unit_uri",
]
