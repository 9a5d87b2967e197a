"""Inference on ONNX Runtime: real YOLOX-nano on real video, a float64 reference decode, a
multi-head export built here with the onnx helper API, and every bad-model path."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from inference_helpers import make_multihead

from edge_agent.config import ModelConfig
from edge_agent.inference import (
    BackendUnavailableError,
    DetectorOutputError,
    InferResult,
    ModelError,
    open_engine,
)
from edge_agent.inference import manifest as mf
from edge_agent.inference.postprocess import Postprocessor, nms
from edge_agent.inference.preprocess import Preprocessor
from edge_agent.tracking.columns import DET_CLASS, DET_COLS, DET_SCORE, X1, X2, Y1, Y2

CLIP = "nvidia_Retail02_short.mp4"
SHIPPED = Path(__file__).resolve().parent.parent / "engines" / "manifests" / "yolox_nano_coco.json"


def cfg(path, **kw) -> ModelConfig:
    base = dict(path=str(path), backend="onnxruntime", providers=["cpu"], max_batch=4,
                intra_op_threads=1)
    base.update(kw)
    return ModelConfig(**base)


@pytest.fixture(scope="module")
def engine(yolox_nano):
    eng = open_engine(cfg(yolox_nano))
    yield eng
    eng.close()


@pytest.fixture(scope="module")
def retail_frames(video_dir):
    """Frames 0, 30, ..., 600 of the Retail02 clip (1920x1080)."""
    cap = cv2.VideoCapture(str(video_dir / CLIP))
    assert cap.isOpened()
    frames = {}
    i = 0
    while i <= 600:
        ok = cap.grab()
        if not ok:
            break
        if i % 30 == 0:
            ok, f = cap.retrieve()
            assert ok
            frames[i] = f
        i += 1
    cap.release()
    assert len(frames) == 21
    return frames


def iou(a, b) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


# --- the real model on real video ---------------------------------------------------------------


def test_engine_reports_manifest_backend_and_batch(engine, yolox_nano):
    m = engine.manifest
    assert m.name == "yolox_nano_coco" and m.sha256 == mf.file_sha256(yolox_nano)
    assert m.heads == {"crowd": ["person"], "weapon": ["knife"]}
    assert engine.backend_name == "onnxruntime:CPUExecutionProvider"
    assert engine.native_batch == 1 and engine.max_batch == 4  # fixed-batch model: frame by frame


# Looked at (boxes drawn, PNGs viewed) on frames 0, 350, 370, 550: 8-11 people are visible at any
# time; YOLOX-nano at 416x234 of real image finds the nearer, unoccluded ones. Over every 10th
# frame it found 3..9 persons (mean 6.0), no box on the two chairs, and nothing as "knife".
PERSONS_PER_FRAME = (3, 10)
PERSONS_MEAN = (4.5, 7.5)
# Hand-drawn boxes on frame 0 (1920x1080 px): the man in white trousers and the man with the
# grey backpack in the front aisle, and the two chairs by the counter (must not be persons).
FRAME0_PEOPLE = [(322, 517, 697, 960), (697, 382, 990, 900)]
FRAME0_CHAIRS = [(1012, 525, 1252, 900), (1245, 667, 1462, 907)]


@pytest.mark.slow
def test_persons_on_retail_video(engine, retail_frames):
    counts = []
    items = sorted(retail_frames.items())
    for s in range(0, len(items), engine.max_batch):  # batches of 4 frames, as the daemon does
        chunk = items[s:s + engine.max_batch]
        res = engine.infer([f for _, f in chunk])
        assert isinstance(res, InferResult) and len(res.detections) == len(chunk)
        assert set(res.timing) == {"pre_ms", "infer_ms", "post_ms"}
        for (idx, frame), det in zip(chunk, res.detections):
            assert set(det) == {"crowd", "weapon"}
            crowd = det["crowd"]
            assert crowd.dtype == np.float32 and crowd.shape[1] == DET_COLS
            assert det["weapon"].shape == (0, DET_COLS), f"frame {idx}: a knife in a grocery aisle"
            lo, hi = PERSONS_PER_FRAME
            assert lo <= len(crowd) <= hi, f"frame {idx}: {len(crowd)} persons"
            assert np.all(crowd[:, DET_CLASS] == 0) and np.all(crowd[:, DET_SCORE] >= 0.3)
            assert np.all(np.diff(crowd[:, DET_SCORE]) <= 0), "rows sorted by score"
            h, w = frame.shape[:2]
            assert np.all(crowd[:, [X1, Y1]] >= 0) and np.all(crowd[:, X2] <= w)
            assert np.all(crowd[:, Y2] <= h)
            # standing people seen from above: boxes taller than wide, most of them
            assert np.mean(crowd[:, Y2] - crowd[:, Y1] > crowd[:, X2] - crowd[:, X1]) >= 0.5
            counts.append(len(crowd))
            if idx == 0:
                for person in FRAME0_PEOPLE:
                    assert max(iou(person, b) for b in crowd) > 0.5, person
                for chair in FRAME0_CHAIRS:
                    assert max(iou(chair, b) for b in crowd) < 0.3, chair
    assert PERSONS_MEAN[0] <= np.mean(counts) <= PERSONS_MEAN[1], counts


def test_batch_equals_single_frames_of_different_sizes(engine, retail_frames):
    big = retail_frames[300]
    small = cv2.resize(retail_frames[450], (960, 540))
    tall = big[:, 600:1400]  # a 1080x800 crop view (not contiguous): padded on the right
    batch = engine.infer([big, small, tall]).detections
    for frame, got in zip([big, small, tall], batch):
        one = engine.infer([frame]).detections[0]
        for head in ("crowd", "weapon"):
            np.testing.assert_allclose(got[head], one[head], atol=1e-4)
    assert len(batch[0]["crowd"]) > 0 and len(batch[2]["crowd"]) > 0


# --- a float64 reference decode -----------------------------------------------------------------


def reference_letterbox(frame, size=416, pad=114.0):
    h, w = frame.shape[:2]
    r = min(size / h, size / w)
    nw, nh = int(round(w * r)), int(round(h * r))
    canvas = np.full((size, size, 3), pad, np.float64)
    canvas[:nh, :nw] = cv2.resize(frame, (nw, nh), interpolation=cv2.INTER_LINEAR)
    return canvas.transpose(2, 0, 1)[None].astype(np.float32), r


def reference_decode(raw, r, frame_shape, thr, iou_thr, strides=(8, 16, 32), size=416):
    """The textbook YOLOX decode: one row at a time, float64, greedy NMS per class."""
    raw = raw.astype(np.float64)
    rows = []
    k = 0
    for s in strides:
        g = size // s
        for gy in range(g):
            for gx in range(g):
                rows.append((gx, gy, s, k))
                k += 1
    dets = []
    for gx, gy, s, k in rows:
        x, y, lw, lh, obj = raw[k, :5]
        scores = obj * raw[k, 5:]
        c = int(np.argmax(scores))
        if scores[c] < thr:
            continue
        cx, cy, bw, bh = (x + gx) * s, (y + gy) * s, np.exp(lw) * s, np.exp(lh) * s
        dets.append([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2, scores[c], c])
    dets = np.array(dets).reshape(-1, 6)
    kept = []
    for c in np.unique(dets[:, 5]):
        d = dets[dets[:, 5] == c]
        d = d[np.argsort(-d[:, 4], kind="stable")]
        while len(d):
            kept.append(d[0])
            d = np.array([b for b in d[1:] if iou(d[0], b) <= iou_thr]).reshape(-1, 6)
    out = np.array(kept).reshape(-1, 6)
    out[:, :4] /= r
    out[:, [0, 2]] = out[:, [0, 2]].clip(0, frame_shape[1])
    out[:, [1, 3]] = out[:, [1, 3]].clip(0, frame_shape[0])
    return out[np.lexsort((out[:, 0], -out[:, 4]))]


def all_classes_manifest(yolox_nano) -> mf.Manifest:
    """The shipped manifest with one head holding all 80 COCO classes."""
    data = json.loads(SHIPPED.read_text())
    data["heads"] = {"all": {"output": "output"}}
    return mf.parse(data, "all-classes")


@pytest.mark.parametrize("frame_idx,thr", [(0, 0.3), (450, 0.3), (300, 0.05)])
def test_pre_and_post_processing_match_float64_reference(engine, retail_frames, yolox_nano,
                                                         frame_idx, thr):
    frame = retail_frames[frame_idx]
    m = all_classes_manifest(yolox_nano)
    ours, geo = Preprocessor(m.input)([frame])
    ref_in, r = reference_letterbox(frame)
    np.testing.assert_array_equal(ours, ref_in)
    assert geo.scale[0] == r
    raw = engine.session.run(None, {"images": ref_in})[0]
    got = Postprocessor(m, thr, 0.45)({"output": raw}, geo)[0]["all"].astype(np.float64)
    ref = reference_decode(raw[0], r, frame.shape, thr, 0.45)
    assert len(ref) >= 5
    got = got[np.lexsort((got[:, X1], -got[:, DET_SCORE]))]
    assert got.shape == ref.shape, (len(got), len(ref))
    np.testing.assert_array_equal(got[:, DET_CLASS], ref[:, DET_CLASS])
    np.testing.assert_allclose(got[:, :DET_CLASS], ref[:, :DET_CLASS], atol=2e-3, rtol=1e-5)


def test_nms_matches_greedy_loop():
    rng = np.random.default_rng(7)
    xy = rng.uniform(0, 100, (300, 2))
    wh = rng.uniform(5, 40, (300, 2))
    boxes = np.concatenate([xy, xy + wh], 1)
    scores = rng.uniform(0, 1, 300)
    groups = rng.integers(0, 3, 300)
    keep = nms(boxes, scores, groups, 0.3)
    ref = []
    for g in range(3):
        idx = [i for i in np.argsort(-scores) if groups[i] == g]
        while idx:
            ref.append(idx[0])
            idx = [j for j in idx[1:] if iou(boxes[idx[0]], boxes[j]) <= 0.3]
    assert sorted(keep.tolist()) == sorted(ref)
    assert np.all(np.diff(scores[keep]) <= 0)
    # a suppression chain: each box overlaps the next (IoU 0.82) but not the one after
    # (IoU 0.67 < 0.7), scores falling along the chain: greedy keeps every other box
    x = np.arange(40, dtype=np.float64) * 1.0
    chain = np.stack([x, np.zeros(40), x + 10, np.full(40, 10.0)], 1)
    kept = nms(chain, np.linspace(1, 0.5, 40), np.zeros(40, int), 0.7)
    assert kept.tolist() == list(range(0, 40, 2))


# --- our multi-head export contract, on a small ONNX built here ----------------------------------

def test_multihead_export_contract(tmp_path):
    model = tmp_path / "mh.onnx"
    make_multihead(model)
    with open_engine(cfg(model, score_threshold=0.5)) as eng:
        assert eng.manifest.heads == {"weapon": ["pistol", "rifle", "knife"], "crowd": ["person"]}
        assert eng.native_batch is None  # dynamic batch axis: one run for the whole batch
        white = np.full((128, 128, 3), 255, np.uint8)  # letterbox scale 0.5 -> boxes x2
        black = np.zeros((64, 64, 3), np.uint8)
        res = eng.infer([white, black])
    w, b = res.detections
    np.testing.assert_allclose(w["weapon"], [[8, 8, 40, 40, 0.9, 2], [60, 60, 120, 120, 0.7, 0]],
                               atol=1e-5)
    np.testing.assert_allclose(w["crowd"], [[20, 20, 100, 120, 0.95, 0]], atol=1e-5)
    assert b["weapon"].shape == (0, 6) and b["crowd"].shape == (0, 6)  # objectness 0


def test_fixed_batch_model_runs_in_padded_chunks(tmp_path):
    model = tmp_path / "mh2.onnx"
    make_multihead(model, fixed_batch=2)
    white = np.full((64, 64, 3), 255, np.uint8)
    black = np.zeros((64, 64, 3), np.uint8)
    with open_engine(cfg(model, score_threshold=0.5)) as eng:
        assert eng.native_batch == 2 and eng.max_batch == 4
        dets = eng.infer([white, black, white]).detections  # runs as [w, b] + [w, w(pad)]
    assert [len(d["weapon"]) for d in dets] == [2, 0, 2]
    assert [len(d["crowd"]) for d in dets] == [1, 0, 1]


def test_nan_output_is_a_clear_error_and_the_engine_goes_on(tmp_path):
    model = tmp_path / "poison.onnx"
    make_multihead(model, poison=True)
    with open_engine(cfg(model, score_threshold=0.5)) as eng:
        white = np.full((64, 64, 3), 255, np.uint8)
        with pytest.raises(DetectorOutputError, match="output 'weapon': 24 NaN/inf values"):
            eng.infer([white, np.zeros((64, 64, 3), np.uint8)])
        assert len(eng.infer([white]).detections[0]["weapon"]) == 2  # still usable


# --- bad models ---------------------------------------------------------------------------------


def copy_with_manifest(src: Path, dst: Path, **changes) -> Path:
    shutil.copyfile(src, dst)
    data = json.loads(SHIPPED.read_text())
    data["sha256"] = mf.file_sha256(dst)
    for key, value in changes.items():
        section, _, field = key.partition("__")
        if field:
            data[section][field] = value
        else:
            data[section] = value
    dst.with_suffix(".json").write_text(json.dumps(data))
    return dst


def test_missing_file(tmp_path):
    with pytest.raises(ModelError, match="no such file"):
        open_engine(cfg(tmp_path / "nope.onnx"))


def test_non_onnx_bytes(tmp_path):
    bad = tmp_path / "notes.onnx"
    bad.write_bytes(b"this is a text file, not a protobuf \x00\xff" * 100)
    with pytest.raises(ModelError, match="no manifest"):  # no manifest matches its sha256
        open_engine(cfg(bad))
    with pytest.raises(ModelError, match="cannot load it"):  # ... or one that names it
        open_engine(cfg(copy_with_manifest(bad, tmp_path / "named.onnx")))


def test_truncated_file(tmp_path, yolox_nano):
    cut = tmp_path / "cut.onnx"
    cut.write_bytes(yolox_nano.read_bytes()[:1_000_000])
    with pytest.raises(ModelError, match="does not match manifest"):  # sha check comes first
        open_engine(cfg(cut, manifest=str(SHIPPED)))
    with pytest.raises(ModelError, match="cannot load it"):
        open_engine(cfg(copy_with_manifest(cut, tmp_path / "named.onnx")))


def test_sha_mismatch(tmp_path, yolox_nano):
    model = copy_with_manifest(yolox_nano, tmp_path / "m.onnx", sha256="0" * 64)
    with pytest.raises(ModelError, match="sha256 .* does not match manifest"):
        open_engine(cfg(model))


def test_wrong_input_shape(tmp_path, yolox_nano):
    model = copy_with_manifest(yolox_nano, tmp_path / "m.onnx", input__height=320,
                               input__width=320)
    with pytest.raises(ModelError, match=r"axis H: 416 != 320"):
        open_engine(cfg(model))


def test_missing_output(tmp_path, yolox_nano):
    data = json.loads(SHIPPED.read_text())
    model = copy_with_manifest(yolox_nano, tmp_path / "m.onnx",
                               outputs=[dict(data["outputs"][0], name="boxes")],
                               heads={"crowd": {"output": "boxes", "classes": ["person"]}})
    with pytest.raises(ModelError, match="output 'boxes' not in the graph"):
        open_engine(cfg(model))


def test_wrong_class_count(tmp_path, yolox_nano):
    data = json.loads(SHIPPED.read_text())
    out = dict(data["outputs"][0], classes=data["outputs"][0]["classes"][:79])
    model = copy_with_manifest(yolox_nano, tmp_path / "m.onnx", outputs=[out])
    with pytest.raises(ModelError, match="85 columns"):
        open_engine(cfg(model))


@pytest.mark.parametrize("change,msg", [
    ({"sha256": "xyz"}, "sha256: expected 64 hex digits"),
    ({"heads": {"crowd": {"output": "output", "classes": ["unicorn"]}}}, "unicorn"),
    ({"outputs": [{"name": "output", "decode": "anchors", "classes": ["a"]}]}, "decode"),
    ({"input": {"name": "images", "height": 416}}, "input.width: missing"),
])
def test_bad_manifest_names_the_key(change, msg):
    data = json.loads(SHIPPED.read_text())
    data.update(change)
    with pytest.raises(ModelError, match=msg):
        mf.parse(data, "x.json")


def test_detector_output_errors(engine):
    post = Postprocessor(engine.manifest, 0.3, 0.45)
    _, geo = Preprocessor(engine.manifest.input)([np.zeros((100, 100, 3), np.uint8)])
    raw = np.zeros((1, 3549, 85), np.float32)
    raw[0, 10, 7] = np.nan
    with pytest.raises(DetectorOutputError, match="1 NaN/inf"):
        post({"output": raw}, geo)
    with pytest.raises(DetectorOutputError, match=r"shape \(1, 3549, 84\)"):
        post({"output": raw[..., :84]}, geo)
    with pytest.raises(DetectorOutputError, match="rows"):
        post({"output": raw[:, :100]}, geo)
    with pytest.raises(DetectorOutputError, match="shape NoneType"):
        post({}, geo)


def test_bad_frames(engine):
    with pytest.raises(ValueError, match="frame 1: expected uint8"):
        engine.infer([np.zeros((10, 10, 3), np.uint8), np.zeros((10, 10, 3), np.float32)])
    with pytest.raises(ValueError, match="at most 4"):
        engine.infer([np.zeros((10, 10, 3), np.uint8)] * 5)
    with pytest.raises(ValueError, match="frame 0: expected uint8 H x W x 3"):
        engine.infer([np.zeros((10, 10), np.uint8)])
    assert engine.infer([]).detections == []


# --- preprocessing variants, providers, manifest lookup -----------------------------------------


def test_preprocess_rgb_normalised_centered_fp16():
    data = json.loads(SHIPPED.read_text())
    data["input"].update(color="RGB", scale=1 / 255, mean=[0.485, 0.456, 0.406],
                         std=[0.229, 0.224, 0.225], align="center", pad_value=0)
    m = mf.parse(data, "variant")
    rng = np.random.default_rng(1)
    frame = rng.integers(0, 256, (200, 400, 3), dtype=np.uint8)
    x16, geo = Preprocessor(m.input, np.float16)([frame])
    x32, _ = Preprocessor(m.input, np.float32)([frame])
    assert x16.dtype == np.float16 and x16.shape == (1, 3, 416, 416)
    # reference: resize to 416x208, centre vertically (104 px above), RGB, (x/255 - mean)/std
    img = cv2.resize(frame, (416, 208), interpolation=cv2.INTER_LINEAR)[:, :, ::-1] / 255.0
    ref = np.zeros((416, 416, 3))
    ref[104:312] = (img - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225]
    ref[:104] = ref[312:] = -np.array([0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225]
    np.testing.assert_allclose(x32[0], ref.transpose(2, 0, 1), atol=1e-5)
    np.testing.assert_allclose(x16, x32, atol=2e-2)
    assert tuple(geo.offset[0]) == (0, 104) and geo.scale[0] == 416 / 400
    # the offset is undone when boxes go back to frame pixels
    post = Postprocessor(m, 0.5, 0.45)
    raw = np.zeros((1, 3549, 85), np.float32)
    raw[0, 0, :] = 0
    raw[0, 0, 2:4] = np.log(4.0)  # row 0: stride 8, grid (0, 0), 32x32 px centred at (0, 0)
    raw[0, 0, 4], raw[0, 0, 5] = 1.0, 0.9
    det = post({"output": raw}, geo)[0]["crowd"]
    np.testing.assert_allclose(det[0, :4], [0, 0, 16 / geo.scale[0], 0], atol=1e-4)


def test_preprocess_buffers_are_per_thread():
    # model.parallel_batches: a batch preprocessed on one thread stays intact while another
    # thread preprocesses the next (a shared buffer would be overwritten under it)
    import threading

    m = mf.parse(json.loads(SHIPPED.read_text()), "shipped")
    pre = Preprocessor(m.input)
    rng = np.random.default_rng(2)
    a, b = (rng.integers(0, 256, (240, 320, 3), dtype=np.uint8) for _ in range(2))
    ref_a = Preprocessor(m.input)([a])[0].copy()
    xa, _ = pre([a])
    other = threading.Thread(target=pre, args=([b],))
    other.start()
    other.join()
    np.testing.assert_array_equal(xa, ref_a)
    assert pre([b])[0] is xa  # the same thread still reuses its own buffer


def test_providers_fall_back_in_config_order(yolox_nano):
    with open_engine(cfg(yolox_nano, providers=["tensorrt", "cuda", "cpu"])) as eng:
        assert eng.backend_name == "onnxruntime:CPUExecutionProvider"
    with open_engine(cfg(yolox_nano, backend="auto")) as eng:  # no TensorRT here
        assert eng.backend_name.startswith("onnxruntime:")
    with pytest.raises(BackendUnavailableError, match="none of the configured ONNX Runtime"):
        open_engine(cfg(yolox_nano, providers=["cuda"]))


def test_manifest_found_by_sha_in_engine_dir(tmp_path, yolox_nano):
    model = tmp_path / "renamed.onnx"
    shutil.copyfile(yolox_nano, model)  # no manifest beside it
    assert mf.resolve(model).source == str(SHIPPED.resolve())
    store = tmp_path / "store" / "manifests"
    store.mkdir(parents=True)
    data = json.loads(SHIPPED.read_text())
    data["version"] = "site-copy"
    (store / "mine.json").write_text(json.dumps(data))
    assert mf.resolve(model, engine_dir=tmp_path / "store").version == "site-copy"
