"""Tracking at detect_every 1, 3 and 6 on the MOT sequences that have video, scored by TrackEval.

The sequences: every one under ``--mot-dir`` with a video in ``<sequence>/video/`` (frame k of
the video is MOT frame k; the boxes are scaled by the video's width over seqinfo's ``imWidth``),
here TUD-Campus (its own 640x480 video), and PETS09-S2L1 from OpenCV's vtest.avi (the same view
shrunk to 480x360: ground truth and detections x 0.625; ../shared/data/mot/SOURCES.md). A
sequence added with a ``video/`` folder is scored with the others. Detections are SORT's
Faster R-CNN ``det/det.txt``; with ``detect_every N`` only frames 1, 1 + N, 1 + 2N, ... have
detections (keyframes); with ``--phases all`` each sequence is also run with its keyframes
shifted by 1 .. N - 1 frames (frame 1 stays a keyframe: the detector runs on a stream's first
frame), each shift scored as a sequence of its own, so that a result does not hang on which
frames happened to be keyframes.

Trackers, each scored on every frame:
* ours with the frame: ``update(dets, frame)`` on keyframes, ``update(None, frame)`` between;
* ours without: the same with no frame (``update(None)`` between: the Kalman prediction);
* roboflow SORT / ByteTrack / OC-SORT at their defaults, run on the keyframes only at
  ``frame_rate / N`` (fed empty frames they would confirm nothing), boxes held between;
* the seed's approach: roboflow SORT on the keyframes (at ``frame_rate / N``) and a dlib
  ``correlation_tracker`` started on each of its output boxes, followed between keyframes.

    .venv-bench/bin/python bench/mot_video_eval.py [--every 1,3,6] [--only ours,ours_boxes,...]
        [--per-seq] [--parts] [--phases all]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Callable, Dict, Iterator, List, NamedTuple, Optional, Tuple

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from mot_eval import trackeval_scores  # noqa: E402

from edge_agent.tracking import Tracker  # noqa: E402
from edge_agent.tracking.motdata import Sequence, load_dets, read_seqinfo  # noqa: E402


class VideoSeq(NamedTuple):
    seq: Sequence          # as the video shows it: its size, gt/dets scaled
    video: Path
    scale: float           # MOT boxes x scale = video pixels
    dets: List[np.ndarray]
    phase: int = 0         # keyframes: frame 0 and the frames k with k = phase (mod N)

    def keyframe(self, k: int, every: int) -> bool:
        """Does frame k (0-based) have detections at detect_every ``every``?"""
        return k == 0 or (k - self.phase) % every == 0


VIDEO_SUFFIXES = (".avi", ".mp4", ".mkv", ".mov")
# Sequences whose video is not in their own folder (relative to the MOT folder).
ELSEWHERE = {
    "PETS09-S2L1": Path("..") / "video" / "license-unclear" / "vtest_480x360_reencoded.avi",
}


def find_video(mot_dir: Path, name: str) -> Optional[Path]:
    """The sequence's video: the first file in ``<name>/video/`` (TUD-Campus's layout, and any
    sequence added the same way), else a known place elsewhere, else None."""
    own = mot_dir / name / "video"
    found = sorted(p for p in own.glob("*") if p.suffix.lower() in VIDEO_SUFFIXES) \
        if own.is_dir() else []
    if found:
        return found[0]
    other = ELSEWHERE.get(name)
    return mot_dir / other if other is not None and (mot_dir / other).is_file() else None


def video_scale(video: Path, seq: Sequence) -> float:
    """Video pixels per MOT pixel (the same both ways), from the video's frame size."""
    import cv2

    cap = cv2.VideoCapture(str(video))
    try:
        w, h = cap.get(cv2.CAP_PROP_FRAME_WIDTH), cap.get(cv2.CAP_PROP_FRAME_HEIGHT)
    finally:
        cap.release()
    if not (w > 0 and h > 0 and seq.width > 0 and seq.height > 0):
        raise ValueError(f"{video}: frame size {w:g}x{h:g} unreadable, or {seq.path}/seqinfo.ini "
                         f"has no imWidth/imHeight")
    sx, sy = w / seq.width, h / seq.height
    if abs(sx - sy) > 0.01 * sx:
        raise ValueError(f"{video}: {w:g}x{h:g} is not {seq.width}x{seq.height} scaled evenly "
                         f"(x {sx:.3f}, y {sy:.3f})")
    return sx


def video_sequences(mot_dir: Path, det_file: str = "det.txt") -> List[VideoSeq]:
    """Every sequence under ``mot_dir`` with ground truth, ``det/<det_file>`` and a video
    (``find_video``), boxes in video pixels; ``det_file``: det.txt (SORT's Faster R-CNN) or
    det_acf.txt (MOT15's ACF: more misses and false boxes)."""
    found = []
    for d in sorted(p for p in mot_dir.iterdir() if p.is_dir()):
        if not all((d / f).is_file() for f in ("seqinfo.ini", "gt/gt.txt", f"det/{det_file}")):
            continue
        video = find_video(mot_dir, d.name)
        if video is None:
            continue
        s = read_seqinfo(d)
        scale = video_scale(video, s)
        # ACF scores below 0 clipped to 0, as in the MOT15 tables (tracker_cv.load_set)
        dets = [np.c_[f[:, :4] * scale, np.clip(f[:, 4], 0, None), f[:, 5]]
                for f in load_dets(s, det_file)]
        seq = s._replace(width=round(s.width * scale), height=round(s.height * scale))
        found.append(VideoSeq(seq, video, scale, dets))
    return found


def write_gt(vs: VideoSeq, gt_root: Path) -> None:
    """The sequence's ground truth scaled to the video, where TrackEval looks for it."""
    d = gt_root / vs.seq.name
    (d / "gt").mkdir(parents=True, exist_ok=True)
    raw = np.loadtxt(vs.seq.path / "gt" / "gt.txt", delimiter=",", ndmin=2)
    raw[:, 2:6] *= vs.scale
    fmt = ["%d", "%d", "%.3f", "%.3f", "%.3f", "%.3f"] + ["%g"] * (raw.shape[1] - 6)
    np.savetxt(d / "gt" / "gt.txt", raw, fmt=fmt, delimiter=",")
    shutil.copy(vs.seq.path / "seqinfo.ini", d / "seqinfo.ini")


def frames(vs: VideoSeq) -> Iterator[np.ndarray]:
    import cv2

    cap = cv2.VideoCapture(str(vs.video))
    try:
        for _ in range(vs.seq.length):
            ok, pic = cap.read()
            if not ok:
                raise RuntimeError(f"{vs.video}: ended before frame {vs.seq.length}")
            yield pic
    finally:
        cap.release()


# A run: (sequence, N) -> per frame (M, 5) rows x1, y1, x2, y2, id.
Run = Callable[[VideoSeq, int], List[np.ndarray]]


def ours(with_frame: bool, **params) -> Run:
    def run(vs: VideoSeq, every: int) -> List[np.ndarray]:
        t = Tracker(frame_rate=vs.seq.frame_rate, frame_width=float(vs.seq.width),
                    frame_height=float(vs.seq.height), **params)
        out = []
        pics = frames(vs) if with_frame else (None for _ in range(vs.seq.length))
        for k, pic in enumerate(pics):
            out.append(t.update(vs.dets[k] if vs.keyframe(k, every) else None, pic)[:, :5])
        return out
    return run


def _sv(d: np.ndarray):
    import supervision as sv

    return sv.Detections(xyxy=d[:, :4].copy(), confidence=d[:, 4].copy(),
                         class_id=d[:, 5].astype(int))


def _rows(out) -> np.ndarray:
    if out.tracker_id is None or len(out) == 0:
        return np.zeros((0, 5))
    keep = out.tracker_id >= 0
    return np.c_[out.xyxy[keep], out.tracker_id[keep]]


def peer(cls_name: str) -> Run:
    """A roboflow tracker on the keyframes at frame_rate / N, its boxes held between."""
    def run(vs: VideoSeq, every: int) -> List[np.ndarray]:
        import trackers

        tr = getattr(trackers, cls_name)(frame_rate=vs.seq.frame_rate / every)
        out, held = [], np.zeros((0, 5))
        for k in range(vs.seq.length):
            if vs.keyframe(k, every):
                held = _rows(tr.update(_sv(vs.dets[k])))
            out.append(held)
        return out
    return run


def seed(vs: VideoSeq, every: int) -> List[np.ndarray]:
    """SORT on the keyframes; a dlib correlation tracker per SORT box between them."""
    import cv2
    import dlib
    import trackers

    tr = trackers.SORTTracker(frame_rate=vs.seq.frame_rate / every)
    out, followed = [], []
    for k, pic in enumerate(frames(vs)):
        if vs.keyframe(k, every):
            rows = _rows(tr.update(_sv(vs.dets[k])))
            out.append(rows)
            if every > 1:
                rgb = cv2.cvtColor(pic, cv2.COLOR_BGR2RGB)
                followed = []
                for x1, y1, x2, y2, tid in rows:
                    c = dlib.correlation_tracker()
                    c.start_track(rgb, dlib.rectangle(int(x1), int(y1), int(x2), int(y2)))
                    followed.append((c, tid))
            continue
        rgb = cv2.cvtColor(pic, cv2.COLOR_BGR2RGB)
        rows = []
        for c, tid in followed:
            c.update(rgb)
            p = c.get_position()
            rows.append((p.left(), p.top(), p.right(), p.bottom(), tid))
        out.append(np.array(rows, dtype=float).reshape(-1, 5))
    return out


RUNS: Dict[str, tuple] = {
    "ours": ("edge-agent with the frame (update(None, frame) between)", ours(True)),
    "ours_boxes": ("edge-agent, boxes only (update(None) between)", ours(False)),
    "sort": ("roboflow trackers 2.6.1 SORT, held", peer("SORTTracker")),
    "bytetrack": ("roboflow trackers 2.6.1 ByteTrack, held", peer("ByteTrackTracker")),
    "ocsort": ("roboflow trackers 2.6.1 OC-SORT, held", peer("OCSORTTracker")),
    "seed": ("seed: SORT + dlib correlation_tracker between", seed),
}
PEERS = ("sort", "bytetrack", "ocsort", "seed")


def write_rows(rows: List[np.ndarray], path: Path) -> None:
    lines = []
    for f, r in enumerate(rows, start=1):
        for x1, y1, x2, y2, tid in r:
            lines.append(f"{f},{int(tid)},{x1:.2f},{y1:.2f},{x2 - x1:.2f},{y2 - y1:.2f},1,-1,-1,-1")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + ("\n" if lines else ""))


def shifted(vs: VideoSeq, phase: int) -> VideoSeq:
    """The sequence with its keyframes shifted by ``phase`` frames, named apart for TrackEval."""
    if phase == 0:
        return vs
    return vs._replace(seq=vs.seq._replace(name=f"{vs.seq.name}-shift{phase}"), phase=phase)


def evaluate(mot_dir: Path, names: List[str], everies: List[int],
             runs: Optional[Dict[str, tuple]] = None,
             log: Callable[[str], None] = lambda m: None,
             all_phases: bool = False, det_file: str = "det.txt") -> Dict[int, Dict[str, Dict]]:
    """TrackEval scores: every N -> tracker -> sequence name or COMBINED_SEQ -> metrics.
    ``all_phases``: each sequence at every keyframe shift 0 .. N - 1 (each a sequence)."""
    runs = runs or RUNS
    base = video_sequences(mot_dir, det_file)
    if not base:
        raise FileNotFoundError(f"no sequence with video under {mot_dir}")
    out: Dict[int, Dict[str, Dict]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        gt_root = Path(tmp) / "gt"
        for every in everies:
            vseqs = [shifted(vs, p) for vs in base for p in range(every if all_phases else 1)]
            for vs in vseqs:
                if not (gt_root / vs.seq.name).exists():
                    write_gt(vs, gt_root)
            trk = Path(tmp) / f"every{every}"
            for name in names:
                for vs in vseqs:
                    write_rows(runs[name][1](vs, every), trk / name / "data" / f"{vs.seq.name}.txt")
                log(f"ran {name} at detect_every {every}")
            out[every] = trackeval_scores(gt_root, trk, names, [vs.seq for vs in vseqs])
    return out


PARTS = ("HOTA", "DetA", "DetRe", "DetPr", "AssA", "AssRe", "AssPr", "LocA")


def print_parts(res: Dict[int, Dict[str, Dict]], names: List[str], everies: List[int],
                seqs: List[VideoSeq]) -> None:
    """HOTA's parts per tracker, N and sequence (the mean over its shifts), and combined: where
    a tracker loses between N = 1 and N = 6, in finding people or in keeping their IDs."""
    print("\n| tracker | sequence | N | " + " | ".join(PARTS) + " |")
    print("|---|---|---:|" + "---:|" * len(PARTS))
    for n in names:
        for name in [vs.seq.name for vs in seqs] + ["COMBINED_SEQ"]:
            for every in everies:
                cells = " | ".join(f"{seq_mean(res[every][n], name, p):.1f}" for p in PARTS)
                print(f"| {n} | {name} | {every} | {cells} |")


def seq_mean(scores: Dict[str, Dict], name: str, metric: str = "HOTA") -> float:
    """A sequence's ``metric``, the mean over its keyframe shifts (each scored on its own)."""
    return float(np.mean([v[metric] for k, v in scores.items()
                          if k == name or k.startswith(name + "-shift")]))


def kept_per_seq(res: Dict[int, Dict[str, Dict]], every: int,
                 seqs: List[VideoSeq]) -> List[Tuple[str, float]]:
    """(sequence, ours' HOTA at N = every over its HOTA at N = 1) per sequence."""
    return [(vs.seq.name, seq_mean(res[every]["ours"], vs.seq.name) /
             seq_mean(res[1]["ours"], vs.seq.name)) for vs in seqs]


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mot-dir", default=str(REPO.parent / "shared" / "data" / "mot"))
    ap.add_argument("--every", default="1,3,6")
    ap.add_argument("--only", default=",".join(RUNS))
    ap.add_argument("--per-seq", action="store_true")
    ap.add_argument("--parts", action="store_true",
                    help="also HOTA's parts per sequence (detection and association recall, "
                         "precision; the mean over the shifts)")
    ap.add_argument("--phases", choices=("first", "all"), default="first",
                    help="all: also every shift of the keyframes (1 .. N - 1 frames)")
    ap.add_argument("--dets", default="det.txt",
                    help="detections: det.txt (Faster R-CNN) or det_acf.txt (ACF)")
    args = ap.parse_args(argv)
    names = [n for n in args.only.split(",") if n]
    everies = [int(x) for x in args.every.split(",")]
    res = evaluate(Path(args.mot_dir), names, everies,
                   log=lambda m: print(m, file=sys.stderr, flush=True),
                   all_phases=args.phases == "all", det_file=args.dets)
    seqs = video_sequences(Path(args.mot_dir), args.dets)
    listed = " + ".join(f"{vs.seq.name} (video x{vs.scale:g})" for vs in seqs)
    print(f"TrackEval 1.3.0 (BENCHMARK=MOT15), {listed} "
          f"combined; {args.dets} detections on every N-th frame"
          + (", every keyframe shift" if args.phases == "all" else "") + ".\n")
    print("| tracker | N | HOTA | MOTA | IDF1 | ID sw |")
    print("|---|---:|---:|---:|---:|---:|")
    for every in everies:
        for n in names:
            c = res[every][n]["COMBINED_SEQ"]
            print(f"| {RUNS[n][0]} | {every} | {c['HOTA']:.1f} | {c['MOTA']:.1f} | "
                  f"{c['IDF1']:.1f} | {c['IDSW']} |")
    if args.per_seq:
        # per sequence; with every shift, the mean over its shifts
        print("\n| sequence | N | " + " | ".join(f"{n} HOTA/IDF1" for n in names) + " |")
        print("|---|---:|" + "---:|" * len(names))
        for vs in seqs:
            for every in everies:
                cells = [f"{seq_mean(res[every][n], vs.seq.name):.1f}/"
                         f"{seq_mean(res[every][n], vs.seq.name, 'IDF1'):.1f}" for n in names]
                print(f"| {vs.seq.name} | {every} | " + " | ".join(cells) + " |")
    if args.parts:
        print_parts(res, names, everies, seqs)
    if "ours" in names:
        print()
        for every in everies:
            c = res[every]["ours"]["COMBINED_SEQ"]
            peers = [n for n in names if n in PEERS]
            line = f"N={every}: ours"
            if peers:
                bh = max(res[every][n]["COMBINED_SEQ"]["HOTA"] for n in peers)
                bi = max(res[every][n]["COMBINED_SEQ"]["IDF1"] for n in peers)
                line += f" - best peer HOTA {c['HOTA'] - bh:+.1f}, IDF1 {c['IDF1'] - bi:+.1f}"
            if "ours_boxes" in names:
                line += (f"; - ours without frame HOTA "
                         f"{c['HOTA'] - res[every]['ours_boxes']['COMBINED_SEQ']['HOTA']:+.1f}")
            if 1 in res and every != 1:
                line += f"; kept {c['HOTA'] / res[1]['ours']['COMBINED_SEQ']['HOTA']:.3f} of N=1"
                line += " (" + ", ".join(
                    f"{name} {kept:.3f}" for name, kept in kept_per_seq(res, every, seqs)) + ")"
            print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
