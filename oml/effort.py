"""Encoder effort: how much encoding time each tile gets, as online adaptation and latent refinement.

==========  =====================================  ===========================
effort      online adaptation                      latent refinement
==========  =====================================  ===========================
fast        none                                   none
default     quick (:mod:`oml.quick`)               none
archival    quick                                  ``ARCHIVAL_REFINE`` iterations
==========  =====================================  ===========================

Quick adaptation keeps most of what the paper's search gains at a fraction of its time; it is also
the best gain per second of encoding among the adaptation settings, so archival spends its extra
time on refinement, whose gain is an order of magnitude larger (docs/RESULTS.md §2 and §7). Every
level decodes with the same decoder at the same speed.
"""

from __future__ import annotations

from typing import NamedTuple

from oml.adapt import AdaptConfig
from oml.names import EFFORTS
from oml.refine import RefineConfig

# Refinement iterations of the archival effort: where refinement's gain per second is best
# (docs/RESULTS.md §7).
ARCHIVAL_REFINE = 400


class Effort(NamedTuple):
    """The encoder settings of an effort level."""

    adapt: AdaptConfig
    refine: RefineConfig


def coding_effort(name: str, metrics: tuple[str, ...] = ("psnr",), steps: int | None = None, refine: int | None = None) -> Effort:
    """The settings of effort ``name`` for ``metrics``; ``steps`` (iterations of the paper's search,
    0 for none) replaces its adaptation and ``refine`` its refinement iterations."""
    if name not in EFFORTS:
        raise ValueError(f"effort must be one of {', '.join(EFFORTS)}, got {name!r}")
    adapt = AdaptConfig(steps=steps, metrics=metrics) if steps is not None else AdaptConfig(metrics=metrics, quick=name != "fast")
    iterations = refine if refine is not None else (ARCHIVAL_REFINE if name == "archival" else 0)
    return Effort(adapt, RefineConfig(iterations))
