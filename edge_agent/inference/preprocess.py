"""Frames -> model input: letterbox, colour order, scaling, NCHW, FP16 when the engine wants it.

Shared by every backend. Buffers are allocated once per batch size and thread and reused, so the
returned array is only valid until the same thread's next call (the engine consumes it at once);
batches preprocessed on two threads at once (``model.parallel_batches``) do not share one.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Dict, Sequence, Tuple

import cv2
import numpy as np

from edge_agent.inference.manifest import InputSpec


@dataclass(frozen=True)
class Letterbox:
    """Geometry of a letterboxed batch, to map boxes back to frame pixels.

    ``frame_px = (input_px - offset) / scale``. Arrays have one row per frame.
    """

    scale: np.ndarray  # (N,) float64
    offset: np.ndarray  # (N, 2) float64, x and y of the image's top-left corner in the input
    frame_size: np.ndarray  # (N, 2) float64, frame width and height


def check_frames(frames: Sequence[np.ndarray]) -> None:
    """Raise ``ValueError`` naming the first frame that is not a BGR uint8 H x W x 3 array."""
    for i, f in enumerate(frames):
        if not isinstance(f, np.ndarray):
            raise ValueError(f"frame {i}: expected a numpy array, got {type(f).__name__}")
        if f.dtype != np.uint8 or f.ndim != 3 or f.shape[2] != 3:
            raise ValueError(f"frame {i}: expected uint8 H x W x 3 (BGR), got {f.dtype} "
                             f"{tuple(f.shape)}")
        if f.shape[0] < 1 or f.shape[1] < 1:
            raise ValueError(f"frame {i}: empty image {tuple(f.shape)}")


class Preprocessor:
    """Letterbox a list of BGR frames (any sizes) into one N x 3 x H x W batch."""

    def __init__(self, spec: InputSpec, dtype=np.float32):
        self.spec = spec
        self.dtype = np.dtype(dtype)
        # Per-channel affine in the model's channel order: x * a + b == (x * scale - mean) / std.
        std = np.asarray(spec.std, np.float64)
        self._a = (spec.scale / std).astype(np.float32).reshape(1, 3, 1, 1)
        b = (-np.asarray(spec.mean, np.float64) / std).astype(np.float32).reshape(1, 3, 1, 1)
        self._identity = bool(np.all(self._a == 1) and np.all(b == 0))
        self._b = b.astype(self.dtype)  # cast once here, not per batch
        self._pad = int(round(min(max(spec.pad_value, 0), 255)))
        self._local = threading.local()  # per thread: batch size -> (canvas, output)

    def _buffers(self, n: int) -> Tuple[np.ndarray, np.ndarray]:
        bufs: Dict[int, Tuple[np.ndarray, np.ndarray]] = self._local.__dict__.setdefault(
            "bufs", {})
        if n not in bufs:
            h, w = self.spec.height, self.spec.width
            bufs[n] = (np.full((n, h, w, 3), self._pad, np.uint8),
                       np.empty((n, 3, h, w), self.dtype))
        return bufs[n]

    def __call__(self, frames: Sequence[np.ndarray]) -> Tuple[np.ndarray, Letterbox]:
        """Return the model input (a reused buffer) and the letterbox geometry."""
        check_frames(frames)
        n = len(frames)
        H, W = self.spec.height, self.spec.width
        canvas, out = self._buffers(n)
        scale = np.empty(n, np.float64)
        offset = np.zeros((n, 2), np.float64)
        size = np.empty((n, 2), np.float64)
        center = self.spec.align == "center"
        for i, f in enumerate(frames):  # one resize per frame; everything after is one array op
            h, w = f.shape[:2]
            r = min(H / h, W / w)
            nw = min(W, max(1, int(round(w * r))))
            nh = min(H, max(1, int(round(h * r))))
            x0 = (W - nw) // 2 if center else 0
            y0 = (H - nh) // 2 if center else 0
            c = canvas[i]
            if not f.flags.c_contiguous:  # e.g. a crop view; OpenCV wants contiguous rows
                f = np.ascontiguousarray(f)
            if (nw, nh) == (w, h):
                c[y0:y0 + nh, x0:x0 + nw] = f
            else:
                c[y0:y0 + nh, x0:x0 + nw] = cv2.resize(f, (nw, nh), interpolation=cv2.INTER_LINEAR)
            # Re-pad only the borders (a previous frame of another size may have drawn there).
            c[:y0] = self._pad
            c[y0 + nh:] = self._pad
            c[y0:y0 + nh, :x0] = self._pad
            c[y0:y0 + nh, x0 + nw:] = self._pad
            scale[i], offset[i], size[i] = r, (x0, y0), (w, h)
        chw = canvas.transpose(0, 3, 1, 2)
        if self.spec.color == "RGB":
            chw = chw[:, ::-1]
        if self._identity:
            np.copyto(out, chw, casting="unsafe")
        else:
            np.multiply(chw, self._a, out=out, casting="unsafe")
            out += self._b
        return out, Letterbox(scale, offset, size)
