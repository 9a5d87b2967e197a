"""Plate crops for OCR: the search region around a detector box, and multi-frame fusion.

A plate detector's box is a hint, not the text line: on footage unlike its training data it can
be twice the plate's width or sit a few pixels off it. So the rule keeps a *search region* (the
box grown on every side) and the OCR step finds the character line inside it (see ``ocr.py``).

A plate 12 px tall is at the edge of what a text recogniser resolves in one frame, and each
frame's H.264 noise and sampling phase differ. :func:`on_grid` puts several frames' regions of
the same track on one upscaled grid and :func:`fuse` aligns them (phase correlation, then ECC,
affine) and averages them: the per-frame noise averages out and some of the detail that single
frames alias away comes back (shift-and-add super-resolution).
"""

from __future__ import annotations

from typing import List, NamedTuple, Optional, Sequence, Tuple

import cv2
import numpy as np

Box = Tuple[float, float, float, float]

# Search region: the detector box grown by this share of its width / height on each side.
GROW_X, GROW_Y = 0.5, 1.0
# Frames whose alignment correlation is below this are a different view (or not the same plate)
# and are left out of the fusion.
MIN_ECC = 0.75
# Lines at least this share of the tallest line's height, on its row, are the same plate text.
SAME_ROW_HEIGHT = 0.6


class PlateCrop(NamedTuple):
    """A search region of one frame and the detector's box in its pixel coordinates."""

    image: np.ndarray
    box: Box


def grown(image: np.ndarray, box: Box, grow_x: float, grow_y: float) -> Tuple[int, int, int, int]:
    """Integer pixel bounds (x1, y1, x2, y2) of ``box`` grown by ``grow_x`` / ``grow_y`` of its
    width / height on each side, clipped to ``image`` (may be empty)."""
    h, w = image.shape[:2]
    bw, bh = box[2] - box[0], box[3] - box[1]
    xa, ya = max(0, int(box[0] - grow_x * bw)), max(0, int(box[1] - grow_y * bh))
    xb, yb = min(w, int(np.ceil(box[2] + grow_x * bw))), min(h, int(np.ceil(box[3] + grow_y * bh)))
    return xa, ya, xb, yb


def search_crop(image: np.ndarray, box: Sequence[float], grow_x: float = GROW_X,
                grow_y: float = GROW_Y) -> Optional[PlateCrop]:
    """The region around ``box`` (pixels) that OCR searches for the text line; None when the
    box lies outside the image."""
    h, w = image.shape[:2]
    x1, y1, x2, y2 = (float(v) for v in box[:4])
    xa, ya, xb, yb = grown(image, (x1, y1, x2, y2), grow_x, grow_y)
    if xb - xa < 2 or yb - ya < 2 or x2 <= 0 or y2 <= 0 or x1 >= w or y1 >= h:
        return None
    return PlateCrop(image[ya:yb, xa:xb].copy(), (x1 - xa, y1 - ya, x2 - xa, y2 - ya))


def as_crop(crop) -> PlateCrop:
    """A PlateCrop from a PlateCrop or a bare image (then the whole image is the box)."""
    if isinstance(crop, PlateCrop):
        return crop
    img = np.asarray(crop)
    return PlateCrop(img, (0.0, 0.0, float(img.shape[1]), float(img.shape[0])))


def pick_line(lines: Sequence[Box], hint: Box) -> Optional[Box]:
    """The plate's character line. Of the lines whose centre is near the detector's box (inside
    it grown by half its size), the tallest is the seed (a plate's main characters are its
    largest text; dealer and state lines are smaller), joined with the lines beside it on the same
    row and of similar height: the text detector often splits "B 21 GSB" at its spaces."""
    x1, y1, x2, y2 = hint
    gx, gy = (x2 - x1) * 0.5, (y2 - y1) * 0.5
    near = [b for b in lines
            if x1 - gx <= (b[0] + b[2]) / 2 <= x2 + gx and y1 - gy <= (b[1] + b[3]) / 2 <= y2 + gy]
    if not near:
        return None
    seed = max(near, key=lambda b: (b[3] - b[1], b[2] - b[0]))
    sh = seed[3] - seed[1]
    row = [b for b in near
           if min(b[3], seed[3]) - max(b[1], seed[1]) >= 0.5 * min(b[3] - b[1], sh)
           and b[3] - b[1] >= SAME_ROW_HEIGHT * sh]
    return (min(b[0] for b in row), min(b[1] for b in row), max(b[2] for b in row),
            max(b[3] for b in row))


def cut(image: np.ndarray, box: Box, pad_x: float = 0.0, pad_y: float = 0.0) -> np.ndarray:
    """``box`` grown by ``pad_x`` / ``pad_y`` of its size, clipped to the image."""
    xa, ya, xb, yb = grown(image, box, pad_x, pad_y)
    return image[ya:max(yb, ya + 1), xa:max(xb, xa + 1)]


def on_grid(crop: PlateCrop, ref: PlateCrop, scale: float) -> np.ndarray:
    """``crop``'s region resampled (cubic) onto ``ref``'s region upscaled by ``scale``, its
    detector box centred on ``ref``'s and scaled by the boxes' mean size ratio (a first guess
    that :func:`fuse` refines)."""
    bw, bh = crop.box[2] - crop.box[0], crop.box[3] - crop.box[1]
    rw, rh = ref.box[2] - ref.box[0], ref.box[3] - ref.box[1]
    s = scale * 0.5 * (rw / max(bw, 1e-3) + rh / max(bh, 1e-3))
    cx, cy = (crop.box[0] + crop.box[2]) / 2, (crop.box[1] + crop.box[3]) / 2
    rx, ry = scale * (ref.box[0] + ref.box[2]) / 2, scale * (ref.box[1] + ref.box[3]) / 2
    m = np.float32([[s, 0, rx - s * cx], [0, s, ry - s * cy]])
    h, w = ref.image.shape[:2]
    size = (max(1, int(round(w * scale))), max(1, int(round(h * scale))))
    return cv2.warpAffine(crop.image, m, size, flags=cv2.INTER_CUBIC,
                          borderMode=cv2.BORDER_REPLICATE)


def _shift(g0: np.ndarray, g: np.ndarray) -> np.ndarray:
    """Translation-only first alignment (phase correlation), as an ECC start."""
    win = cv2.createHanningWindow((g0.shape[1], g0.shape[0]), cv2.CV_32F)
    (dx, dy), _ = cv2.phaseCorrelate(g0, g, win)
    return np.float32([[1, 0, dx], [0, 1, dy]])


def fuse(patches: List[np.ndarray], min_ecc: float = MIN_ECC) -> Tuple[np.ndarray, int]:
    """The mean of ``patches`` (same size) after aligning each to the first (phase correlation,
    then ECC, affine), and how many went in; patches that do not align (correlation <
    ``min_ecc``) are left out."""
    ref = patches[0]
    g0 = cv2.cvtColor(ref, cv2.COLOR_BGR2GRAY).astype(np.float32)
    acc, n = ref.astype(np.float32), 1
    crit = (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 50, 1e-4)
    h, w = ref.shape[:2]
    for p in patches[1:]:
        g = cv2.cvtColor(p, cv2.COLOR_BGR2GRAY).astype(np.float32)
        warp = _shift(g0, g)
        try:
            cc, warp = cv2.findTransformECC(g0, g, warp, cv2.MOTION_AFFINE, crit, None, 5)
        except cv2.error:  # did not converge: not the same view
            continue
        if cc < min_ecc:
            continue
        acc += cv2.warpAffine(p, warp, (w, h), flags=cv2.INTER_CUBIC + cv2.WARP_INVERSE_MAP,
                              borderMode=cv2.BORDER_REPLICATE)
        n += 1
    return np.clip(acc / n, 0, 255).astype(np.uint8), n
