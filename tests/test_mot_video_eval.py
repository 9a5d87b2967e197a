"""bench/mot_video_eval.py scores every MOT sequence that has a video, not only the two here:
a sequence added with a ``video/`` folder (as a held-out one would be) is found, its boxes
scaled to the video, and a video that does not match the sequence's size is named."""

from __future__ import annotations

import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
from mot_video_eval import find_video, video_sequences  # noqa: E402

SEQINFO = ("[Sequence]\nname={name}\nimDir=img1\nframeRate=10\nseqLength=5\n"
           "imWidth=200\nimHeight=100\nimExt=.jpg\n")


def _sequence(root: Path, name: str, video_size: tuple) -> Path:
    """A 5-frame MOT sequence (one box per frame) with a video of ``video_size`` (w, h)."""
    d = root / name
    for sub in ("gt", "det", "video"):
        (d / sub).mkdir(parents=True)
    (d / "seqinfo.ini").write_text(SEQINFO.format(name=name))
    (d / "gt" / "gt.txt").write_text(
        "".join(f"{f},1,{10 + f},20,40,60,1,1,1\n" for f in range(1, 6)))
    (d / "det" / "det.txt").write_text(
        "".join(f"{f},-1,{10 + f},20,40,60,0.9,-1,-1,-1\n" for f in range(1, 6)))
    w, h = video_size
    out = cv2.VideoWriter(str(d / "video" / f"{name}.avi"), cv2.VideoWriter_fourcc(*"MJPG"),
                          10.0, (w, h))
    assert out.isOpened()
    for _ in range(5):
        out.write(np.full((h, w, 3), 128, np.uint8))
    out.release()
    return d


def test_a_sequence_added_with_a_video_folder_is_scored_scaled_to_its_video(tmp_path):
    _sequence(tmp_path, "NEW-Seq", (100, 50))  # the video at half the MOT size
    (tmp_path / "NO-Video").mkdir()  # a sequence without video is left out
    (tmp_path / "NO-Video" / "seqinfo.ini").write_text(SEQINFO.format(name="NO-Video"))
    [vs] = video_sequences(tmp_path)
    assert vs.seq.name == "NEW-Seq" and vs.scale == pytest.approx(0.5)
    assert (vs.seq.width, vs.seq.height) == (100, 50)
    np.testing.assert_allclose(vs.dets[0][0, :4], [5.5, 10, 25.5, 40])  # x, y, x + w, y + h, / 2
    assert find_video(tmp_path, "NO-Video") is None


def test_a_video_of_another_shape_is_named(tmp_path):
    _sequence(tmp_path, "BAD-Seq", (100, 100))
    with pytest.raises(ValueError, match=r"BAD-Seq\.avi: 100x100 is not 200x100 scaled evenly"):
        video_sequences(tmp_path)
