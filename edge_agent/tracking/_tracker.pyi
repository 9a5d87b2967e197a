"""Type stub for the C tracker core (edge_agent/tracking/_tracker.c)."""

from typing import Any, List, Optional

class Core:
    """Tracker core; use edge_agent.tracking.Tracker, which validates the parameters."""

    def __init__(
        self,
        *,
        high_thresh: float,
        low_thresh: float,
        new_track_thresh: float,
        match_thresh: float,
        low_match_thresh: float,
        tentative_match_thresh: float,
        recovery_thresh: float,
        iou_buffer: float,
        direction_weight: float,
        direction_delta: int,
        fuse_score: bool,
        adaptive: bool,
        score_window: int,
        probation_age: int,
        max_shadow_age: int,
        shadow_min_frames: int,
        coast_frames: int,
        coast_overlap: float,
        miss_rate_ref: float,
        frame_width: float,
        frame_height: float,
        std_weight_position: float,
        std_weight_measurement: float,
        std_weight_velocity: float,
    ) -> None: ...
    def update(self, dets: Optional[Any], frame: Optional[Any] = None) -> bytearray:
        """float64 rows of 8 columns (active tracks) as raw bytes; frame: uint8 (H, W, 3)."""
    def lost(self) -> bytearray: ...
    def reset(self) -> None: ...
    def forget_looks(self) -> None:
        """Drop every track's visual model and the stream's frame size; tracks kept."""
    def configure(self, **params: Any) -> None:
        """Replace the parameters (same keywords as __init__), keeping the tracks."""
    @property
    def frame_count(self) -> int: ...
    @property
    def num_tracks(self) -> int: ...

def lap(cost: Any) -> List[int]:
    """Column assigned to each row (-1 if none) minimising the total of a float64 matrix."""
