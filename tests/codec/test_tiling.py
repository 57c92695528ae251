import pytest
import torch

from oml import tiling


@pytest.mark.parametrize("h,w", [(1, 1), (37, 64), (512, 512), (513, 1025), (768, 512), (1000, 1500)])
def test_split_merge_round_trip(h, w):
    image = torch.randint(0, 256, (3, h, w), dtype=torch.uint8)
    grid = tiling.tile_grid(h, w)
    assert torch.equal(tiling.merge(tiling.split(image, grid), grid, h, w), image)
    assert sum(t.height * t.width for t in grid) == h * w
    assert all(t.height <= 512 and t.width <= 512 for t in grid)


def test_pad_crop_round_trip():
    x = torch.rand(1, 3, 70, 129)
    p = tiling.pad(x)
    assert p.shape[-2:] == (128, 192)
    assert torch.equal(tiling.crop(p, 70, 129), x)
    assert torch.equal(p[..., 69, :129], p[..., 127, :129])  # replicated bottom row


def test_bad_sizes():
    with pytest.raises(ValueError, match="positive"):
        tiling.tile_grid(0, 10)
    with pytest.raises(ValueError, match="multiple of 64"):
        tiling.tile_grid(10, 10, tile=100)


@pytest.mark.parametrize("height,width,tile", [(300, 420, 128), (512, 512, 512), (64, 1000, 64), (1000, 64, 128)])
def test_tile_range_rects_cover_exactly_the_range_on_the_grid(height, width, tile):
    """Every contiguous range of tiles is covered by at most three grid-aligned rectangles whose own
    tiling gives back exactly those tiles, in order."""
    grid = tiling.tile_grid(height, width, tile)
    for first in range(len(grid)):
        for count in range(1, len(grid) - first + 1):
            rects = tiling.tile_range_rects(height, width, tile, first, count)
            assert len(rects) <= 3
            covered = [
                tiling.Tile(t.top + r.top, t.left + r.left, t.height, t.width) for r in rects for t in tiling.tile_grid(r.height, r.width, tile)
            ]
            assert covered == grid[first : first + count]


def test_regions_outside_the_image_are_refused_and_overlaps_are_exact():
    grid = tiling.tile_grid(300, 400, 128)
    assert tiling.overlapping(grid, tiling.Region(127, 127, 2, 2)) == [0, 1, 4, 5]
    assert tiling.overlapping(grid, tiling.Region(128, 0, 128, 128)) == [1]
    for bad in [tiling.Region(0, 0, 401, 1), tiling.Region(-1, 0, 5, 5), tiling.Region(0, 0, 0, 5)]:
        with pytest.raises(ValueError, match="is not inside the 400x300 image"):
            tiling.check_region(bad, 300, 400)
