"""Image ⇄ tiles of at most 512×512, and padding of a tile to a multiple of 64.

Tiles cover the image row-major without overlap; boundary tiles are smaller.
Padding replicates the last row/column (bottom and right) so the codec sees no
artificial edge; the decoder crops it away again.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from oml.names import TILE

MULTIPLE = 64
MAX_TILE = 4096  # the byte format stores the tile side in 16 bits; larger tiles serve no purpose


class Tile(NamedTuple):
    """Position ``(top, left)`` and size ``(height, width)`` of one tile, in pixels."""

    top: int
    left: int
    height: int
    width: int


def check_tile_size(tile: int) -> None:
    """ValueError unless ``tile`` is a positive multiple of :data:`MULTIPLE` up to :data:`MAX_TILE`."""
    if tile <= 0 or tile % MULTIPLE:
        raise ValueError(f"tile size must be a positive multiple of {MULTIPLE}, got {tile}")
    if tile > MAX_TILE:
        raise ValueError(f"tile size {tile} is over the format's limit of {MAX_TILE}")


def tile_grid(height: int, width: int, tile: int = TILE) -> list[Tile]:
    """Row-major tiles of at most ``tile``² covering a ``height``×``width`` image."""
    if height <= 0 or width <= 0:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    check_tile_size(tile)
    return [
        Tile(top, left, min(tile, height - top), min(tile, width - left))
        for top in range(0, height, tile)
        for left in range(0, width, tile)
    ]


def split(image: Tensor, tiles: list[Tile]) -> list[Tensor]:
    """Cut ``image`` ``(C,H,W)`` into views ``(C,h,w)``, one per tile."""
    return [image[:, t.top : t.top + t.height, t.left : t.left + t.width] for t in tiles]


def merge(parts: list[Tensor], tiles: list[Tile], height: int, width: int) -> Tensor:
    """Inverse of :func:`split`: tiles ``(C,h,w)`` → image ``(C,H,W)``."""
    if len(parts) != len(tiles):
        raise ValueError(f"{len(parts)} tile images for {len(tiles)} tiles")
    out = torch.empty((parts[0].shape[0], height, width), dtype=parts[0].dtype)
    for part, t in zip(parts, tiles):
        out[:, t.top : t.top + t.height, t.left : t.left + t.width] = part
    return out


def padded_size(height: int, width: int, multiple: int = MULTIPLE) -> tuple[int, int]:
    """Smallest multiple of ``multiple`` at least as large as each side."""
    return -(-height // multiple) * multiple, -(-width // multiple) * multiple


def pad(x: Tensor, multiple: int = MULTIPLE) -> Tensor:
    """Replicate-pad ``(B,C,h,w)`` at the bottom and right to a multiple of ``multiple``."""
    h, w = x.shape[-2:]
    ph, pw = padded_size(h, w, multiple)
    if (ph, pw) == (h, w):
        return x
    return F.pad(x, (0, pw - w, 0, ph - h), mode="replicate")


def crop(x: Tensor, height: int, width: int) -> Tensor:
    """Undo :func:`pad`: keep the top-left ``height``×``width``."""
    return x[..., :height, :width]
