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


def grid_shape(height: int, width: int, tile: int = TILE) -> tuple[int, int]:
    """Rows and columns of :func:`tile_grid`'s tiles."""
    return -(-height // tile), -(-width // tile)


def tile_range_rects(height: int, width: int, tile: int, first: int, count: int) -> list[Tile]:
    """Pixel rectangles, at most three, that cover exactly tiles ``first … first+count-1`` of
    :func:`tile_grid` (row-major): the rest of a first partial row, the whole rows, the start of a
    last partial row. Each starts on the grid, so cropping the image to it and tiling the crop gives
    the very same tiles."""
    rows, cols = grid_shape(height, width, tile)
    if not (0 <= first and 0 < count and first + count <= rows * cols):
        raise ValueError(f"tiles {first}…{first + count - 1} are not all in a {rows}x{cols} grid")
    runs, end = [], first + count
    while first < end:
        row, col = divmod(first, cols)
        if col == 0 and end - first >= cols:
            span = (end - first) // cols * cols  # whole rows
            runs.append((row, 0, span // cols, cols))
        else:
            span = min(cols - col, end - first)
            runs.append((row, col, 1, span))
        first += span
    return [_rect(height, width, tile, *run) for run in runs]


def _rect(height: int, width: int, tile: int, row: int, col: int, nrows: int, ncols: int) -> Tile:
    top, left = row * tile, col * tile
    return Tile(top, left, min(nrows * tile, height - top), min(ncols * tile, width - left))


class Region(NamedTuple):
    """A window of an image in pixels: ``left``, ``top``, ``width``, ``height`` (the ``--region`` order)."""

    left: int
    top: int
    width: int
    height: int


def check_region(region: Region, height: int, width: int) -> None:
    """ValueError unless ``region`` is a non-empty window inside a ``width``×``height`` image."""
    left, top, w, h = region
    if w <= 0 or h <= 0 or left < 0 or top < 0 or left + w > width or top + h > height:
        raise ValueError(f"region {left},{top},{w},{h} (left,top,width,height) is not inside the {width}x{height} image")


def overlapping(tiles: list[Tile], region: Region) -> list[int]:
    """Numbers of the tiles that share at least one pixel with ``region``."""
    return [
        i
        for i, t in enumerate(tiles)
        if t.left < region.left + region.width and region.left < t.left + t.width and t.top < region.top + region.height and region.top < t.top + t.height
    ]
