"""Drawing tracks, alerts and zone counts on a frame (the `track` command's output video).

Text is sized from the frame (about 1/40 of its height, never under 14 px) and sits on a filled
background, so it reads the same at 768x432 as at 1080p. A weapon track with an open weapon
event is drawn as an alert (red, thick, "ALERT", and a red frame border); a plate track whose
text was read shows it. Shadow tracks are not drawn (their box is a guess), but the crowd rule
counts them, so the legend gives each zone's count as the crowd events do and says how many of
those persons are hidden.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Collection, Dict, List, Mapping, Optional, Sequence, Tuple

import cv2
import numpy as np

from edge_agent.events.rules import HeadTracks
from edge_agent.events.zones import Zone, anchor_points
from edge_agent.tracking.columns import BOX, CLASS_ID, SCORE, TRACK_ID

Color = Tuple[int, int, int]  # BGR

# BGR per head; unknown heads get white.
HEAD_COLORS: Dict[str, Color] = {"crowd": (60, 200, 60), "weapon": (40, 40, 255),
                                 "plate": (0, 200, 255)}
ALERT_COLOR: Color = (0, 0, 230)
ZONE_COLOR: Color = (255, 160, 0)
LEGEND_BG: Color = (30, 30, 30)
_FONT = cv2.FONT_HERSHEY_SIMPLEX
_CAP_PX = 22.0  # height of a capital of _FONT at scale 1.0, in pixels


@dataclass(frozen=True)
class Style:
    """Sizes for one frame size: font scale, line thickness, label padding (pixels)."""

    font: float
    thick: int
    pad: int

    @classmethod
    def for_frame(cls, width: int, height: int) -> Style:
        """Text about 1/40 of the frame's height (27 px at 1080p), at least 14 px."""
        text_px = max(14.0, min(height, width * 9 / 16) / 40.0)
        font = text_px / _CAP_PX
        return cls(font=font, thick=max(1, int(round(font * 1.6))), pad=max(2, int(text_px / 4)))


def _text_color(bg: Color) -> Color:
    b, g, r = bg
    return (0, 0, 0) if 0.114 * b + 0.587 * g + 0.299 * r > 140 else (255, 255, 255)


Rect = Tuple[int, int, int, int]  # x1, y1, x2, y2


def _overlaps(a: Rect, b: Rect) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def label(image: np.ndarray, text: str, x: int, y: int, bg: Color, style: Style,
          above: bool = True, taken: Optional[List[Rect]] = None) -> None:
    """``text`` on a filled ``bg`` box whose bottom-left is (x, y) (top-left when not ``above``
    or when there is no room above), kept inside the frame. With ``taken`` (labels already
    drawn), it moves down past those it would cover, and is added to them."""
    h, w = image.shape[:2]
    (tw, th), base = cv2.getTextSize(text, _FONT, style.font, style.thick)
    bw, bh = tw + 2 * style.pad, th + base + 2 * style.pad
    x = min(max(0, x), max(0, w - bw))
    top = y - bh if above and y - bh >= 0 else y
    top = min(max(0, top), max(0, h - bh))
    for _ in range(len(taken or ())):
        hit = [r for r in taken or () if _overlaps((x, top, x + bw, top + bh), r)]
        if not hit or top + bh >= h:
            break
        top = min(max(r[3] for r in hit), h - bh)
    if taken is not None:
        taken.append((x, top, x + bw, top + bh))
    cv2.rectangle(image, (x, top), (x + bw, top + bh), bg, cv2.FILLED)
    cv2.putText(image, text, (x + style.pad, top + style.pad + th), _FONT, style.font,
                _text_color(bg), style.thick, cv2.LINE_AA)


def hidden_counts(persons: Optional[HeadTracks], zones: Sequence[Zone], width: int,
                  height: int) -> Dict[str, int]:
    """Shadow person tracks inside each zone (the crowd rule counts them, the overlay hides
    them)."""
    out = {z.name: 0 for z in zones}
    if persons is None or not len(persons.lost):
        return out
    pts = anchor_points(persons.lost, width, height)
    for z in zones:
        out[z.name] = int(np.count_nonzero(z.contains(pts)))
    return out


@dataclass(frozen=True)
class PlateRead:
    """A plate track's text (read by OCR when the track ended) and its best box, in pixels."""

    track_id: int
    text: str
    box: Sequence[float]


def _box(values: Sequence[float], w: int, h: int) -> Tuple[int, int, int, int]:
    x1, y1, x2, y2 = (float(v) for v in values[:4])
    return (int(round(min(max(x1, 0), w - 1))), int(round(min(max(y1, 0), h - 1))),
            int(round(min(max(x2, 0), w - 1))), int(round(min(max(y2, 0), h - 1))))


Label = Tuple[str, int, int, Color]  # text, x, y (the box's top-left), background


def _draw_tracks(image: np.ndarray, tracks: Mapping[str, HeadTracks], alerts: Collection[int],
                 reads: Sequence[PlateRead], style: Style) -> List[Label]:
    """Draw the boxes; their labels are returned, to be drawn after the legend."""
    h, w = image.shape[:2]
    texts = {r.track_id: r.text for r in reads}
    drawn = set()
    labels: List[Label] = []
    for head, tr in tracks.items():
        color = HEAD_COLORS.get(head, (255, 255, 255))
        for row in tr.active:
            x1, y1, x2, y2 = _box(row[BOX], w, h)
            tid = int(row[TRACK_ID])
            text = f"{tr.label(row[CLASS_ID])} #{tid} {float(row[SCORE]):.2f}"
            bg, thick = color, style.thick
            if head == "weapon" and tid in alerts:
                bg, thick, text = ALERT_COLOR, style.thick * 2, "ALERT " + text
            elif head == "plate" and tid in texts:
                text = f"plate #{tid} '{texts[tid]}'"
                drawn.add(tid)
            cv2.rectangle(image, (x1, y1), (x2, y2), bg, thick)
            labels.append((text, x1, y1, bg))
    for r in reads:  # the text comes at the track's end: shown at its best box for a while
        if r.track_id not in drawn:
            x1, y1, x2, y2 = _box(r.box, w, h)
            cv2.rectangle(image, (x1, y1), (x2, y2), HEAD_COLORS["plate"], style.thick)
            labels.append((f"plate #{r.track_id} '{r.text}'", x1, y1, HEAD_COLORS["plate"]))
    return labels


def _legend(image: np.ndarray, lines: List[Tuple[str, Color]], style: Style,
            taken: List[Rect]) -> None:
    (_, th), base = cv2.getTextSize("Ag", _FONT, style.font, style.thick)
    y = style.pad
    for text, bg in lines:
        label(image, text, style.pad, y, bg, style, above=False, taken=taken)
        y += th + base + 3 * style.pad


def draw(image: np.ndarray, tracks: Mapping[str, HeadTracks], zones: Sequence[Zone],
         counts: Mapping[str, int], footer: str = "", alerts: Collection[int] = (),
         plate_reads: Sequence[PlateRead] = ()) -> np.ndarray:
    """Draw zones, boxes (class, track ID, score), alerts and the legend onto ``image`` (in
    place, returned for chaining).

    ``counts``: persons per zone name as the crowd rule counted them (shadow tracks included);
    ``alerts``: weapon track IDs with an open weapon event; ``plate_reads``: recent plate texts.
    """
    h, w = image.shape[:2]
    style = Style.for_frame(w, h)
    for z in zones:
        if z.polygon is not None:
            cv2.polylines(image, [z.pixel_polygon(w, h)], True, ZONE_COLOR, style.thick)
    labels = _draw_tracks(image, tracks, set(alerts), plate_reads, style)
    hidden = hidden_counts(tracks.get("crowd"), zones, w, h)
    lines: List[Tuple[str, Color]] = []
    for name, n in counts.items():
        extra = f" (incl. {hidden[name]} hidden)" if hidden.get(name) else ""
        lines.append((f"zone {name}: {n} persons{extra}", LEGEND_BG))
    if alerts:  # open weapon events, also while their track is hidden for a moment
        lines.append((f"WEAPON ALERT: track {', '.join(f'#{t}' for t in sorted(alerts))}",
                      ALERT_COLOR))
        cv2.rectangle(image, (0, 0), (w - 1, h - 1), ALERT_COLOR, style.thick * 3)
    if footer:
        lines.append((footer, LEGEND_BG))
    taken: List[Rect] = []  # labels move down past those drawn before them
    _legend(image, lines, style, taken)
    for text, x, y, bg in labels:
        label(image, text, x, y, bg, style, taken=taken)
    return image
