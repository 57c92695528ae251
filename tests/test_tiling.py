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
