"""Optional plate OCR (extra ``[ocr]``: rapidocr-onnxruntime, PP-OCR ONNX models in its wheel).

``load_reader()`` returns a function crops -> (text, score) that reads every crop and votes, or
None with the reason when OCR is not installed, so plate events can say why they carry no text.
"""

from __future__ import annotations

import collections
import logging
import re
import threading
from typing import Callable, List, Optional, Tuple

import numpy as np

log = logging.getLogger(__name__)

Reader = Callable[[List[np.ndarray]], Tuple[Optional[str], Optional[float]]]

_KEEP = re.compile(r"[^A-Z0-9]")


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


def load_reader() -> Tuple[Optional[Reader], str]:
    """(reader, "ok") or (None, why not)."""
    try:
        from rapidocr_onnxruntime import RapidOCR  # type: ignore

        engine = RapidOCR()
    except ImportError:
        return None, "ocr_unavailable"
    except Exception as exc:  # a broken install must not stop the daemon
        log.warning("plate OCR disabled: rapidocr_onnxruntime failed to load: %s", exc)
        return None, "ocr_unavailable"
    lock = threading.Lock()  # one ONNX Runtime session; keep calls serial

    def read(crops: List[np.ndarray]) -> Tuple[Optional[str], Optional[float]]:
        reads: List[Tuple[str, float]] = []
        for crop in crops:
            # The crop already is the text region: recognition only. PP-OCR's text detector
            # finds nothing on a tight plate crop (tried: it returns None where rec reads it).
            with lock:
                result, _ = engine(crop, use_det=False, use_cls=False, use_rec=True)
            for item in result or []:
                text, conf = item[-2], item[-1]
                reads.append((str(text), float(conf)))
        return vote(reads)

    return read, "ok"
