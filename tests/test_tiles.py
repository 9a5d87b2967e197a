"""Overlapping tiles of a frame (inference/tiles.py) and the training side's zoom and tiles."""

import numpy as np
import pytest

from edge_agent.inference import tiles as T


@pytest.mark.parametrize("w,h,grid", [(416, 234, 2), (1920, 1080, 3), (640, 360, 1), (101, 77, 2)])
def test_tiles_cover_the_frame_and_overlap(w, h, grid):
    tiles = T.tile_grid(w, h, grid)
    assert len(tiles) == grid * grid
    covered = np.zeros((h, w), bool)
    for t in tiles:
        assert t.x >= 0 and t.y >= 0 and t.x + t.w <= w and t.y + t.h <= h
        covered[t.y:t.y + t.h, t.x:t.x + t.w] = True
    assert covered.all()
    if grid > 1:  # neighbours share a strip of about the overlap's share of a tile
        a, b = tiles[0], tiles[1]
        shared = a.x + a.w - b.x
        assert shared >= int(T.DEFAULT_OVERLAP * a.w) - 1


def test_bad_grid_and_overlap_are_named():
    with pytest.raises(ValueError, match="grid"):
        T.tile_grid(100, 100, 0)
    with pytest.raises(ValueError, match="overlap"):
        T.tile_grid(100, 100, 2, overlap=0.6)


def test_merge_maps_tile_boxes_to_the_frame_and_removes_the_copy_in_the_overlap():
    tiles = T.tile_grid(400, 200, 2)
    right = tiles[1]
    # one object in the overlap of the two top tiles, seen by both; another only in the right one
    obj = np.array([right.x + 2, 10, right.x + 22, 30], np.float32)
    left_d = np.array([[*(obj - [0, 0, 0, 0]), 0.9, 0]], np.float32)
    right_d = np.array([[obj[0] - right.x, obj[1], obj[2] - right.x, obj[3], 0.8, 0],
                        [150, 50, 170, 80, 0.7, 0]], np.float32)
    out = T.merge([left_d, right_d, np.zeros((0, 6)), np.zeros((0, 6))], tiles, 0.5)
    assert len(out) == 2
    np.testing.assert_allclose(out[0, :5], [*obj, 0.9])
    np.testing.assert_allclose(out[1, :4], [right.x + 150, 50, right.x + 170, 80])


def test_crop_is_the_tiles_pixels():
    frame = np.arange(60 * 80 * 3, dtype=np.uint8).reshape(60, 80, 3)
    t = T.tile_grid(80, 60, 2)[3]
    np.testing.assert_array_equal(T.crop(frame, t), frame[t.y:, t.x:])
