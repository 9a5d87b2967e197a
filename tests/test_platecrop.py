"""Plate crop geometry and multi-frame fusion (platecrop.py): no OCR needed."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from edge_agent.events import platecrop as pc


def test_search_crop_grows_the_box_and_keeps_it_in_region_coordinates():
    img = np.zeros((100, 200, 3), np.uint8)
    crop = pc.search_crop(img, (100, 40, 140, 50))  # 40 x 10 box
    assert crop.image.shape == (30, 80, 3)  # +-20 px (half the width), +-10 px (the height)
    assert crop.box == (20.0, 10.0, 60.0, 20.0)
    edge = pc.search_crop(img, (180, 90, 210, 100))  # clipped at the frame's corner
    assert edge.image.shape[:2] == (20, 35) and edge.box == (15.0, 10.0, 45.0, 20.0)
    assert pc.search_crop(img, (300, 10, 340, 20)) is None


def test_as_crop_takes_a_bare_image_as_its_own_box():
    c = pc.as_crop(np.zeros((12, 40, 3), np.uint8))
    assert c.box == (0.0, 0.0, 40.0, 12.0)


def test_pick_line_takes_the_tallest_line_near_the_box():
    hint = (20.0, 10.0, 60.0, 20.0)
    plate, small_print, far = (30, 12, 55, 22), (30, 22, 55, 25), (150, 12, 190, 24)
    assert pc.pick_line([small_print, plate, far], hint) == plate
    assert pc.pick_line([far], hint) is None
    # "B 21 GSB" split at its spaces by the text detector: one line again
    parts = [(22, 12, 26, 22), (29, 13, 37, 22), (40, 12, 55, 23)]
    assert pc.pick_line(parts + [small_print], hint) == (22, 12, 55, 23)
    assert pc.pick_line([], hint) is None



def test_fuse_aligns_shifted_frames_and_averages_the_noise_out():
    base = np.full((60, 160, 3), 200, np.uint8)
    cv2.putText(base, "B21GSB", (8, 42), cv2.FONT_HERSHEY_SIMPLEX, 1.2, (20, 20, 20), 3)
    frames = []
    for i, (dx, dy) in enumerate([(0, 0), (2.5, -1.0), (-1.5, 1.5), (3.0, 2.0)]):
        m = np.float32([[1, 0, dx], [0, 1, dy]])
        moved = cv2.warpAffine(base, m, (160, 60), borderMode=cv2.BORDER_REPLICATE)
        noise = np.random.default_rng(i).normal(0, 25, moved.shape)
        frames.append(np.clip(moved + noise, 0, 255).astype(np.uint8))
    fused, n = pc.fuse(frames)
    assert n == 4
    err = lambda im: float(np.abs(im.astype(float) - base).mean())  # noqa: E731
    smeared = np.mean([f.astype(float) for f in frames], axis=0)  # averaged without aligning
    assert err(fused) < 0.75 * err(frames[0])  # the noise averaged out
    assert err(fused) < 0.75 * err(smeared)  # and the text was aligned, not smeared
    # a frame of something else does not align and stays out
    other = np.random.default_rng(9).integers(0, 255, (60, 160, 3)).astype(np.uint8)
    assert pc.fuse([frames[0], other, frames[1]])[1] == 2


def test_on_grid_maps_each_box_onto_the_reference_box():
    img = np.zeros((80, 200, 3), np.uint8)
    img[30:40, 60:100] = 255  # a white "plate"
    ref = pc.search_crop(img, (60, 30, 100, 40))
    half = cv2.resize(img, (100, 40), interpolation=cv2.INTER_AREA)
    small = pc.search_crop(half, (30, 15, 50, 20))  # the same plate at half the size
    grid = pc.on_grid(small, ref, 2.0)
    assert grid.shape[:2] == (ref.image.shape[0] * 2, ref.image.shape[1] * 2)
    x1, y1, x2, y2 = (int(v * 2) for v in ref.box)
    assert grid[y1 + 4:y2 - 4, x1 + 4:x2 - 4].min() > 200  # the plate lands on the ref's box
    assert grid[:y1 - 4].max() < 50


@pytest.mark.parametrize("bad", [(0, 0, 0, 0), (-50, -50, -10, -10)])
def test_search_crop_refuses_boxes_outside_the_image(bad):
    assert pc.search_crop(np.zeros((20, 20, 3), np.uint8), bad) is None
