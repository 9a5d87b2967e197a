"""Overlapping tiles of a frame (inference/tiles.py) and the training side's zoom and tiles."""

from pathlib import Path

import cv2
import numpy as np
import pytest

from edge_agent.inference import tiles as T
from edge_agent.inference.postprocess import iou_matrix

REPO = Path(__file__).resolve().parent.parent
SAMPLE = REPO / "samples" / "retail02_12s.mp4"


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


def _engine(max_batch: int):
    from edge_agent.model.checks import engine_for

    return engine_for(str(REPO / "engines" / "models" / "edge_multihead.onnx"), 0.3, max_batch)


def _first_frame() -> np.ndarray:
    cap = cv2.VideoCapture(str(SAMPLE))
    ok, frame = cap.read()
    cap.release()
    assert ok, SAMPLE
    return frame


@pytest.mark.parametrize("max_batch", [1, 4])
def test_tiles_find_people_where_they_are_and_other_heads_keep_the_whole_frame(max_batch):
    """The shipped model on a sample frame put in the bottom-right quarter of a grey frame
    twice its size: the boxes of the tile that holds it, mapped back, are where the people of
    the frame alone are (an offset or scale slip would miss them)."""
    from edge_agent.capture import Frame
    from edge_agent.pipeline.detector import Tiling, detect

    img = _first_frame()
    h, w = img.shape[:2]
    big = np.full((2 * h, 2 * w, 3), 114, np.uint8)
    big[h:, w:] = img
    with _engine(max_batch) as eng:
        alone = eng.infer([img]).detections[0]["crowd"]
        whole = eng.infer([big]).detections[0]
        frame = Frame("cam", 0, big, 0.0, 0.0, 0.0)
        tiled = detect(eng, [frame], Tiling({"cam": 2}, {"cam": ["crowd"]}, 0.45)).detections[0]
        plain = detect(eng, [frame], Tiling({}, {}, 0.45)).detections[0]
    assert len(alone) >= 3
    shifted = alone[:, :4] + [w, h, w, h]
    both = iou_matrix(np.concatenate([shifted, tiled["crowd"][:, :4]]).astype(np.float64))
    cross = both[:len(shifted), len(shifted):]
    assert (cross.max(1) > 0.7).mean() >= 0.8, cross.max(1)
    for head in ("weapon", "plate"):  # not tile heads: the whole frame's boxes, unchanged
        np.testing.assert_array_equal(tiled[head], whole[head])
    for head in whole:
        np.testing.assert_array_equal(plain[head], whole[head])
