"""Multi-object tracker: a C99 core (``_tracker.c``) behind a small NumPy interface.

Columns of the arrays returned by :meth:`Tracker.update` and :meth:`Tracker.lost` (float64):

====  =====================  ==========================================================
col   name                   meaning
====  =====================  ==========================================================
0-3   x1, y1, x2, y2         the Kalman-filtered box (pixels)
4     track_id               positive integer, unique for the tracker's life
5     score                  score of the last detection matched to the track
6     class_id               the track's class (tracks only ever match their own class)
7     frames_since_update    0 when a detection was matched this frame
====  =====================  ==========================================================

Parameters are documented in ``docs/tracker.md`` and :data:`PARAMS`. Durations are in seconds
and turned into frames at ``frame_rate``; score thresholds apply to scores placed on the range of
each class's recent scores (``adaptive``), so the same values serve any detector's score scale.
"""

from __future__ import annotations

from typing import Any, Dict, NamedTuple, Optional, Tuple

import numpy as np

from edge_agent.tracking import _tracker

__all__ = ["Tracker", "PARAMS", "CAMERA_PARAMS", "REMOVED_PARAMS", "COLUMNS", "check_params"]

COLUMNS: Tuple[str, ...] = (
    "x1", "y1", "x2", "y2", "track_id", "score", "class_id", "frames_since_update",
)


class _Param(NamedTuple):
    kind: type  # float, int or bool
    default: Any
    lo: float
    hi: float
    doc: str


# name -> (type, default, inclusive range, meaning). The defaults come from the out-of-fold
# procedure in docs/tracker.md ("How the defaults were chosen"), never from scoring on the
# sequences they are reported on.
PARAMS: Dict[str, _Param] = {
    "visual": _Param(bool, True, 0, 1,
                     "use the picture when update() is given one: a correlation filter per "
                     "track follows it between detections and helps associate; false: boxes "
                     "only (the frame is ignored)"),
    "adaptive": _Param(bool, True, 0, 1,
                       "score thresholds apply to the score placed on the range of its "
                       "class's last score_window scores (2nd to 90th percentile -> 0..1), so "
                       "they hold for any detector's scale; false: to the raw score"),
    "score_window": _Param(int, 500, 1, 1_000_000,
                           "detections per class in the running score distribution (adaptive)"),
    "high_thresh": _Param(float, 0.3, 0.0, 1e6,
                          "detections scoring at least this are 'high' (stages 1 and 3)"),
    "low_thresh": _Param(float, 0.0, 0.0, 1e6,
                         "detections in [low_thresh, high_thresh) only extend active tracks"),
    "new_track_thresh": _Param(float, 0.5, 0.0, 1e6,
                               "an unmatched high detection starts a track from this score"),
    "match_thresh": _Param(float, 0.1, 0.0, 1.0,
                           "stage 1 minimum similarity (IoU, times score if fuse_score)"),
    "low_match_thresh": _Param(float, 0.6, 0.0, 1.0, "stage 2 minimum IoU for low detections"),
    "tentative_match_thresh": _Param(float, 0.2, 0.0, 1.0,
                                     "stage 3 minimum similarity for tentative tracks"),
    "recovery_thresh": _Param(float, 0.4, 0.0, 1.0,
                              "OC-SORT recovery: minimum IoU against a track's last observed "
                              "box for leftovers after stage 1 (0 = off)"),
    "iou_buffer": _Param(float, 0.1, 0.0, 2.0,
                         "stage 1 boxes are enlarged by this fraction of their size on each side "
                         "before IoU (C-BIoU), for fast motion and low frame rates"),
    "direction_weight": _Param(float, 0.1, 0.0, 10.0,
                               "OC-SORT velocity-direction consistency weight in stage 1 "
                               "(0 = off)"),
    "direction_delta": _Param(int, 5, 1, 1000,
                              "frames between the observations that define a track's direction"),
    "fuse_score": _Param(bool, True, 0, 1, "multiply IoU by detection score in stages 1 and 3"),
    "probation_age": _Param(int, 3, 1, 10_000,
                            "hits before a tentative track becomes active (reported): frames "
                            "with a detection matched to it or, with the picture, frames its "
                            "filter found it in"),
    "frame_rate": _Param(float, 30.0, 0.1, 1000.0,
                         "frames per second that update() is called at (the camera's "
                         "processed rate); turns the *_s parameters into frames"),
    "max_shadow_s": _Param(float, 1.0, 0.0, 36_000.0,
                           "seconds a lost (shadow) track is kept for re-matching (and at "
                           "least shadow_min_frames frames)"),
    "shadow_min_frames": _Param(int, 15, 0, 1_000_000,
                                "a lost track is kept for at least this many frames whatever the "
                                "frame rate (re-finding it takes detector attempts, and a low "
                                "frame rate makes fewer per second); times s, see miss_rate_ref"),
    "miss_rate_ref": _Param(float, 0.15, 0.0, 1.0,
                            "the miss rate of a strong detector on tracked objects (frames with "
                            "detections missed inside gaps that ended in a re-match, per class, "
                            "running over ~500 frames of tracks); a class missed s times as "
                            "often (s at most 2.5) "
                            "keeps lost tracks at least shadow_min_frames x s frames and coasts "
                            "coast_s x s^3 with coast_overlap x s^3; 0 = off"),
    "coast_s": _Param(float, 0.1, 0.0, 36_000.0,
                      "seconds a lost track's predicted box stays reported (frames_since_update "
                      "> 0), counted in frames with detections that missed it (detect_every > "
                      "1: one missed detection frame is one frame), while it lies inside the "
                      "image and, once a detection frame missed it, overlaps no active track by "
                      "coast_overlap and, with a picture, its filter still finds it; 0 = off"),
    "coast_overlap": _Param(float, 0.1, 0.0, 1.0,
                            "a coasted box that a detection frame missed is not reported while its "
                            "IoU with an active track's box of the same class is at least this "
                            "(1 = never suppressed)"),
    "frame_width": _Param(float, 0.0, 0.0, 1e6,
                          "image width in pixels (the camera's), for coasting's inside-the-image "
                          "check; 0 = unknown, no check"),
    "frame_height": _Param(float, 0.0, 0.0, 1e6,
                           "image height in pixels (the camera's); 0 = unknown"),
    "std_weight_position": _Param(float, 0.1, 1e-6, 10.0,
                                  "Kalman process noise std (position) as a fraction of box "
                                  "height, per frame at 30 fps"),
    "std_weight_measurement": _Param(float, 0.1, 1e-6, 10.0,
                                     "Kalman measurement noise std as a fraction of box height "
                                     "(lower: boxes follow detections more closely)"),
    "std_weight_velocity": _Param(float, 1.0 / 160, 1e-6, 10.0,
                                  "Kalman velocity noise std as a fraction of box height, per "
                                  "frame at 30 fps"),
}

# Options removed because they were off by default and did not pay in the measurements
# (docs/tracker.md, "Removed options"): naming one is an error that says so.
REMOVED_PARAMS: Dict[str, str] = {
    "observation_centric": "the OC-SORT re-update",
    "active_first": "the DeepSORT-style cascade",
    "shadow_buffer": "the growing search region of lost tracks",
    "max_tentative_misses": "misses a tentative track survived (it now ends at its first miss)",
}

# Parameters that describe the camera, not the tracking: the daemon sets them from each source
# (set_frame_rate, set_frame_size), so the config does not offer them.
CAMERA_PARAMS: Tuple[str, ...] = ("frame_rate", "frame_width", "frame_height")

# Score thresholds: on the normalised 0..1 range when adaptive, raw scores otherwise.
_SCORE_THRESHOLDS = ("high_thresh", "low_thresh", "new_track_thresh")
# The Kalman weights are stated per frame at this rate (ByteTrack's, for 30 fps video).
_REFERENCE_RATE = 30.0
# Python-only parameters; the C core gets frame counts and per-frame weights instead.
_WRAPPER_ONLY = ("frame_rate", "max_shadow_s", "coast_s", "visual")

_FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def check_params(params: Dict[str, Any]) -> Dict[str, Any]:
    """Every parameter's effective value (defaults filled in), or ``TypeError`` for an unknown
    name and ``ValueError`` naming the parameter and its range."""
    removed = sorted(set(params) & set(REMOVED_PARAMS))
    if removed:
        raise ValueError("; ".join(f"tracker parameter {n} was removed ({REMOVED_PARAMS[n]}: off "
                                   "by default, it did not pay; see docs/tracker.md)"
                                   for n in removed))
    unknown = sorted(set(params) - set(PARAMS))
    if unknown:
        raise TypeError(
            f"Tracker() got unknown parameter(s) {', '.join(unknown)}; "
            f"known: {', '.join(PARAMS)}"
        )
    values: Dict[str, Any] = {}
    for name, spec in PARAMS.items():
        value = params.get(name, spec.default)
        if spec.kind is bool:
            if not isinstance(value, (bool, np.bool_)):
                raise ValueError(f"{name} must be true or false, got {value!r}")
            value = bool(value)
        elif spec.kind is int:
            if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
                raise ValueError(f"{name} must be an integer in [{spec.lo}, {spec.hi}], "
                                 f"got {value!r}")
            value = int(value)
        else:
            if isinstance(value, (bool, np.bool_)) or not isinstance(
                value, (int, float, np.integer, np.floating)
            ):
                raise ValueError(f"{name} must be a number in [{spec.lo}, {spec.hi}], "
                                 f"got {value!r}")
            value = float(value)
        if not (spec.lo <= value <= spec.hi):  # also rejects NaN
            raise ValueError(f"{name} must be in [{spec.lo}, {spec.hi}], got {value!r}")
        values[name] = value
    if values["adaptive"]:
        for name in _SCORE_THRESHOLDS:
            if values[name] > 1.0:
                raise ValueError(f"{name} is on the normalised range [0, 1] when adaptive is "
                                 f"true, got {values[name]!r} (set adaptive: false for raw "
                                 "scores)")
    if values["low_thresh"] > values["high_thresh"]:
        raise ValueError(
            f"low_thresh ({values['low_thresh']}) must not exceed high_thresh "
            f"({values['high_thresh']})"
        )
    return values


def _core_params(values: Dict[str, Any]) -> Dict[str, Any]:
    """The C core's parameters: seconds turned into frames at ``frame_rate``, Kalman process
    noise rescaled from 30 fps to it (a frame at 10 fps spans three at 30)."""
    core = {k: v for k, v in values.items() if k not in _WRAPPER_ONLY}
    rate = values["frame_rate"]
    core["max_shadow_age"] = int(round(values["max_shadow_s"] * rate))
    core["coast_frames"] = int(round(values["coast_s"] * rate))
    scale = _REFERENCE_RATE / rate
    core["std_weight_position"] = values["std_weight_position"] * scale
    core["std_weight_velocity"] = values["std_weight_velocity"] * scale
    return core


_F64 = np.dtype(np.float64)


def _rows(raw: bytearray) -> np.ndarray:
    return np.frombuffer(raw, _F64).reshape(-1, 8)  # writable: a bytearray owns the rows


class Tracker:
    """IoU/Kalman multi-object tracker for one camera.

    ``Tracker(**params)``: every parameter has a default (see :data:`PARAMS`); unknown names
    raise ``TypeError``, bad values ``ValueError`` naming the parameter and its range.
    """

    __slots__ = ("_core", "_params")

    def __init__(self, **params: Any) -> None:
        self._params = check_params(params)
        self._core = _tracker.Core(**_core_params(self._params))

    def update(self, dets: Optional[np.ndarray], frame: Optional[np.ndarray] = None
               ) -> np.ndarray:
        """Advance one frame.

        ``dets``: float32/float64 array (N, 6) x1, y1, x2, y2, score, class_id (any strides),
        or ``None`` for a frame without detection (predict only). ``frame``: the picture the
        detections come from, uint8 (H, W, 3) BGR (any strides), the same size throughout a
        stream: each confirmed track then keeps a correlation filter of its look, follows it
        between detections and stops where it is no longer seen (docs/tracker.md); ``None``
        tracks from the boxes alone. Returns a float64 (M, 8) array (see :data:`COLUMNS`) with
        one row per active track. Invalid input raises ``ValueError`` and leaves the tracker
        unchanged. Detections with zero width or height are ignored; those below
        ``low_thresh`` too.
        """
        if dets is not None:
            if not isinstance(dets, np.ndarray):
                raise ValueError(
                    f"dets must be a NumPy float32/float64 array (N, 6) or None, "
                    f"got {type(dets).__name__}"
                )
            if dets.dtype not in _FLOAT_DTYPES:
                raise ValueError(f"dets must be float32 or float64, got {dets.dtype}")
            if dets.ndim != 2 or dets.shape[1] != 6:
                raise ValueError(
                    "dets must have shape (N, 6): x1, y1, x2, y2, score, class_id; "
                    f"got {dets.shape}"
                )
        if frame is not None and not self._params["visual"]:
            frame = None
        if frame is not None:
            if not isinstance(frame, np.ndarray):
                raise ValueError("frame must be a NumPy uint8 array (H, W, 3) or None, "
                                 f"got {type(frame).__name__}")
            if frame.dtype != np.uint8:
                raise ValueError(f"frame must be uint8 (BGR), got {frame.dtype}")
            if frame.ndim != 3 or frame.shape[2] != 3:
                raise ValueError(f"frame must have shape (H, W, 3) (BGR), got {frame.shape}")
        return _rows(self._core.update(dets, frame))

    def lost(self) -> np.ndarray:
        """Shadow tracks: lost, not yet removed, still re-matchable with their ID (M, 8)."""
        return _rows(self._core.lost())

    def reset(self) -> None:
        """Drop all tracks and restart the frame count. IDs are never reused afterwards."""
        self._core.reset()

    def set_frame_size(self, width: float, height: float) -> None:
        """The camera's image size in pixels (0 = unknown), keeping the tracks: coasted boxes
        are reported only while they lie inside it. A new size also drops the tracks' visual
        models (they were learnt at the old one), so frames of the new size are accepted."""
        old = (self._params["frame_width"], self._params["frame_height"])
        self._retune(frame_width=width, frame_height=height)
        if (float(width), float(height)) != old:
            self._core.forget_looks()

    def set_frame_rate(self, frame_rate: float) -> None:
        """Re-time the tracker for a new ``frame_rate`` (frames/s), keeping its tracks: the
        camera's rate is often known only once it delivers frames."""
        self._retune(frame_rate=frame_rate)

    def _retune(self, **changes: Any) -> None:
        """Change some parameters in place, keeping the tracks (bad values raise, nothing set)."""
        values = check_params({**self._params, **changes})
        self._core.configure(**_core_params(values))
        self._params = values

    def reconfigure(self, **params: Any) -> None:
        """New parameters (as for the constructor; unset ones take their defaults).

        Drops all tracks like :meth:`reset`, but IDs keep counting: a live config reload must
        not hand out an ID a consumer has already seen in this run. Bad parameters raise as in
        the constructor and leave the tracker as it was.
        """
        checked = check_params(params)
        self._core.__init__(**_core_params(checked))  # the C init keeps the ID counter
        self._params = checked

    @property
    def frame_count(self) -> int:
        """Number of update() calls since construction or the last reset()."""
        return self._core.frame_count

    @property
    def num_tracks(self) -> int:
        """Tracks held in any state (tentative, active, shadow)."""
        return self._core.num_tracks

    @property
    def params(self) -> Dict[str, Any]:
        """The effective parameters (a copy)."""
        return dict(self._params)

    def __repr__(self) -> str:
        changed = {k: v for k, v in self._params.items() if v != PARAMS[k].default}
        return f"Tracker({', '.join(f'{k}={v!r}' for k, v in changed.items())})"
