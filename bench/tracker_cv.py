"""Leave-one-sequence-out evaluation of the tracker's defaults (``mot_eval.py --cv``).

The search: every candidate of :data:`SEARCH` (a small grid around the documented design, fixed
before any scoring) runs on every visible MOT15 sequence and detection set once; TrackEval scores
each run in memory (its own dataset and metric classes, no proxy). Per-sequence results combine
exactly as TrackEval combines sequences, so each fold's choice is cheap:

* fold k: the candidate with the best objective over the *other* sequences (both detection sets
  together, one parameter set for both) is scored on sequence k;
* out-of-fold table: the held-out results of all folds, combined;
* shipped defaults: the candidate chosen by the most folds (ties: the better mean inner
  objective over those folds). That rule is fixed in advance and never looks at held-out scores.

Peers run once per sequence and detection set with their defaults (they do not depend on ours);
ACF scores reach them through :func:`acf_to_unit`, ours get the raw scores.
"""

from __future__ import annotations

import itertools
import tempfile
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, NamedTuple, Tuple
from typing import Sequence as Seq

import numpy as np

from edge_agent.tracking import PARAMS
from edge_agent.tracking.motdata import Sequence, load_dets

# Detection sets: file name under <seq>/det, and the map that brings its scores into [0, 1] for
# the peers (which expect probabilities). Ours always takes the raw scores.
DET_SETS: Dict[str, str] = {"frcnn": "det.txt", "acf": "det_acf.txt"}


def acf_to_unit(scores: np.ndarray) -> np.ndarray:
    """ACF's unnormalised scores (about 0..140) into [0, 1): x = s / 100, x / (1 + x)."""
    x = np.clip(scores, 0, None) / 100.0
    return x / (1.0 + x)


def load_det_set(seq: Sequence, det_set: str) -> List[np.ndarray]:
    """Per-frame (N, 6) detections of one set; ACF scores below 0 clipped to 0."""
    dets = load_dets(seq, DET_SETS[det_set])
    for d in dets:
        np.clip(d[:, 4], 0, None, out=d[:, 4])
    return dets


def has_det_set(seq: Sequence, det_set: str) -> bool:
    return (seq.path / "det" / DET_SETS[det_set]).is_file()


# --- the search ------------------------------------------------------------------------------

# Candidate grid: the normalised score thresholds, the stage-1 gate, how long a lost track is
# kept, probation, coasting and the miss-rate reference. Everything else keeps its PARAMS
# default: 3 x 2^4 x 3 x 4 = 576 candidates (480 once new_track_thresh < high_thresh is
# dropped). Coasting is a guess that the event rules count, so the fold rule (fold_choice) only
# takes it where it keeps the acceptance criteria on the fold's own sequences. new_track_thresh
# stays at or below half the score range: a detector whose true positives sit in the lower half
# of its range (MOT15 KITTI-13's FRCNN scores) must still start tracks. iou_buffer stays at its
# design value 0.1 (docs/tracker.md, revision 5: its effect changes sign from sequence to
# sequence, by up to 4 HOTA, so searching it made folds choose by one crossing).
SEARCH: Dict[str, Tuple[Any, ...]] = {
    "high_thresh": (0.2, 0.3, 0.4),
    "new_track_thresh": (0.35, 0.5),
    "match_thresh": (0.05, 0.1),
    "max_shadow_s": (1.0, 1.5),
    "probation_age": (2, 3),
    # Selective coasting (a lost track's predicted box, inside the image, off other tracks),
    # at most a few frames: 0.1 s bridges one missed frame at 10 fps, 0.2 s two.
    "coast_s": (0.0, 0.1, 0.2),
    # The miss rate a strong detector shows on tracked objects; above it lost tracks are kept
    # and coasted longer. 0: off.
    "miss_rate_ref": (0.0, 0.12, 0.15, 0.18),
}


def candidates(space: Dict[str, Tuple[Any, ...]] = None) -> List[Dict[str, Any]]:
    """Every combination of the search space (new_track_thresh below high_thresh is skipped:
    it would act as high_thresh)."""
    space = SEARCH if space is None else space
    names = list(space)
    out = []
    for combo in itertools.product(*(space[n] for n in names)):
        c = dict(zip(names, combo))
        if c.get("new_track_thresh", 1) < c.get("high_thresh", 0):
            continue
        out.append(c)
    return out


def objective(scores: Dict[str, float]) -> float:
    """What a fold maximises: HOTA, plus half IDF1 (identity is what the events use), plus a
    quarter MOTA (false tracks raise false events)."""
    return scores["HOTA"] + 0.5 * scores["IDF1"] + 0.25 * scores["MOTA"]


# --- TrackEval in memory ---------------------------------------------------------------------


class SeqEval:
    """TrackEval (MOT15 rules) for one sequence, fed from arrays instead of result files."""

    def __init__(self, mot_dir: Path, seq: Sequence):
        import trackeval

        self.seq = seq
        with tempfile.TemporaryDirectory() as tmp:
            data = Path(tmp) / "dummy" / "data"
            data.mkdir(parents=True)
            (data / f"{seq.name}.txt").write_text("")
            cfg = trackeval.datasets.MotChallenge2DBox.get_default_dataset_config()
            cfg.update({"GT_FOLDER": str(mot_dir), "TRACKERS_FOLDER": tmp,
                        "TRACKERS_TO_EVAL": ["dummy"], "BENCHMARK": "MOT15",
                        "SPLIT_TO_EVAL": "train", "SKIP_SPLIT_FOL": True,
                        "SEQ_INFO": {seq.name: seq.length}, "PRINT_CONFIG": False,
                        "TRACKER_SUB_FOLDER": "data"})
            self.ds = trackeval.datasets.MotChallenge2DBox(cfg)
            self.gt = self.ds._load_raw_file("dummy", seq.name, is_gt=True)
        self.metrics = [trackeval.metrics.HOTA(), trackeval.metrics.CLEAR({"PRINT_CONFIG": False}),
                        trackeval.metrics.Identity({"PRINT_CONFIG": False})]

    def evaluate(self, rows: np.ndarray) -> Dict[str, Dict[str, Any]]:
        """rows: frame, id, x1, y1, x2, y2 -> {metric name: TrackEval's per-sequence result}."""
        n = self.seq.length
        raw = dict(self.gt)
        ids, dets, cls, conf, sims = [], [], [], [], []
        frames = rows[:, 0].astype(int) if len(rows) else np.zeros(0, int)
        order = np.argsort(frames, kind="stable")
        rows, frames = rows[order], frames[order]
        bounds = np.searchsorted(frames, np.arange(1, n + 2))
        for t in range(n):
            r = rows[bounds[t]:bounds[t + 1]]
            # as in a result file: x, y, w, h with two decimals
            xywh = np.round(np.c_[r[:, 2], r[:, 3], r[:, 4] - r[:, 2], r[:, 5] - r[:, 3]], 2)
            dets.append(np.atleast_2d(xywh).reshape(-1, 4))
            ids.append(r[:, 1].astype(int))
            cls.append(np.ones(len(r), int))
            conf.append(np.ones(len(r)))
            sims.append(self.ds._calculate_similarities(self.gt["gt_dets"][t], dets[-1]))
        raw.update({"tracker_ids": ids, "tracker_dets": dets, "tracker_classes": cls,
                    "tracker_confidences": conf, "similarity_scores": sims})
        data = self.ds.get_preprocessed_seq_data(raw, "pedestrian")
        return {m.get_name(): m.eval_sequence(data) for m in self.metrics}


def combine(results: Iterable[Dict[str, Dict[str, Any]]]) -> Dict[str, float]:
    """TrackEval's sequence combination of per-sequence results -> HOTA, MOTA, IDF1, IDSW (%)."""
    import trackeval

    results = list(results)
    metrics = {"HOTA": trackeval.metrics.HOTA(),
               "CLEAR": trackeval.metrics.CLEAR({"PRINT_CONFIG": False}),
               "Identity": trackeval.metrics.Identity({"PRINT_CONFIG": False})}
    res = {name: m.combine_sequences({i: r[name] for i, r in enumerate(results)})
           for name, m in metrics.items()}
    return {"HOTA": 100 * float(np.mean(res["HOTA"]["HOTA"])),
            "MOTA": 100 * float(res["CLEAR"]["MOTA"]),
            "IDF1": 100 * float(res["Identity"]["IDF1"]),
            "IDSW": int(res["CLEAR"]["IDSW"])}


# --- running trackers ------------------------------------------------------------------------


def track_rows(step: Callable[[np.ndarray], np.ndarray], dets: Seq[np.ndarray]) -> np.ndarray:
    """Run ``step(dets) -> (M, 5) x1, y1, x2, y2, id`` per frame -> rows frame, id, box."""
    out = []
    for f, d in enumerate(dets, start=1):
        r = step(d)
        if len(r):
            out.append(np.c_[np.full(len(r), f), r[:, 4], r[:, :4]])
    return np.vstack(out) if out else np.zeros((0, 6))


def camera(seq: Sequence) -> Dict[str, float]:
    """What the daemon knows of a camera: its frame rate and image size (seqinfo.ini)."""
    return {"frame_rate": seq.frame_rate, "frame_width": float(seq.width or 0),
            "frame_height": float(seq.height or 0)}


def ours_rows(seq: Sequence, dets: Seq[np.ndarray], params: Dict[str, Any]) -> np.ndarray:
    from edge_agent.tracking import Tracker

    t = Tracker(**{**camera(seq), **params})
    return track_rows(lambda d: t.update(d)[:, :5], dets)


class Unit(NamedTuple):
    """One (sequence, detection set) to score on."""

    seq: Sequence
    det_set: str


def units(seqs: Seq[Sequence]) -> List[Unit]:
    return [Unit(s, d) for s in seqs for d in DET_SETS if has_det_set(s, d)]


# Peers whose combined MOTA is "SORT's" in the acceptance criteria.
SORT_PEERS = ("sort", "sort_ref")


def criteria_margin(ours: Dict[str, float], peers: Dict[str, Dict[str, float]]) -> float:
    """How well issue 11's combined criteria are met on one detection set: the smallest of
    HOTA - (best peer + 1.0), IDF1 - (best peer + 2.0) and MOTA - SORT's. >= 0: all are met
    (inf when there are no peers to compare with)."""
    if not peers:
        return np.inf
    sort_mota = max((peers[n]["MOTA"] for n in SORT_PEERS if n in peers), default=-np.inf)
    return min(ours["HOTA"] - max(p["HOTA"] for p in peers.values()) - 1.0,
               ours["IDF1"] - max(p["IDF1"] for p in peers.values()) - 2.0,
               ours["MOTA"] - sort_mota)


PeerTable = Dict[str, Dict[Unit, Dict[str, Any]]]


def fold_choice(table: Dict[int, Dict[Unit, Dict[str, Any]]], train: Seq[Unit],
                peers: PeerTable = None) -> Tuple[int, float]:
    """The candidate a fold picks on its ``train`` units, and its objective (the mean over the
    detection sets of the combined scores' objective).

    Among the candidates that meet the acceptance criteria against the peers on the same
    ``train`` units, on every detection set, the best objective; when none does, the one that
    comes closest (the largest :func:`criteria_margin`, the smallest over the detection sets).
    Without peers, the best objective. Only ``train`` is looked at."""
    peers = peers or {}
    peer_comb = {d: {n: combine([r[u] for u in train if u.det_set == d]) for n, r in peers.items()}
                 for d in DET_SETS if any(u.det_set == d for u in train)}
    best: Tuple[Tuple[bool, float], int, float] = ((False, -np.inf), -1, -np.inf)
    for ci, per_unit in table.items():
        objs, margin = [], np.inf
        for det_set in DET_SETS:
            sel = [per_unit[u] for u in train if u.det_set == det_set]
            if sel:
                comb = combine(sel)
                objs.append(objective(comb))
                margin = min(margin, criteria_margin(comb, peer_comb[det_set]))
        obj = float(np.mean(objs))
        rank = (margin >= 0, obj if margin >= 0 else margin)
        if rank > best[0]:
            best = (rank, ci, obj)
    return best[1], best[2]


def check_space(space: Dict[str, Tuple[Any, ...]]) -> None:
    unknown = [k for k in space if k not in PARAMS]
    if unknown:
        raise ValueError(f"search space names unknown parameters {unknown}")


# --- the whole procedure ---------------------------------------------------------------------

Table = Dict[int, Dict[Unit, Dict[str, Any]]]


# What the search's worker processes read (set before they fork, so nothing is pickled in).
_WORK: Dict[str, Any] = {}


def _score_candidate(params: Dict[str, Any]) -> Dict[Unit, Dict[str, Any]]:
    evals, dets = _WORK["evals"], _WORK["dets"]
    return {u: evals[u.seq.name].evaluate(ours_rows(u.seq, d, params)) for u, d in dets.items()}


def run_search(mot_dir: Path, seqs: Seq[Sequence], cands: Seq[Dict[str, Any]],
               log: Callable[[str], None] = print, jobs: int = 1
               ) -> Tuple[List[Unit], Dict[str, SeqEval], Table]:
    """Every candidate on every (sequence, detection set): TrackEval per-sequence results, in
    ``jobs`` processes (the same results for any number)."""
    import contextlib
    import multiprocessing

    us = units(seqs)
    evals = {s.name: SeqEval(mot_dir, s) for s in seqs}
    _WORK.update(evals=evals, dets={u: load_det_set(u.seq, u.det_set) for u in us})
    table: Table = {}
    pool = (multiprocessing.get_context("fork").Pool(jobs) if jobs > 1
            else contextlib.nullcontext())
    try:
        with pool:  # a Pool is terminated on the way out, also after an error
            results = pool.imap(_score_candidate, cands) if jobs > 1 else map(_score_candidate,
                                                                               cands)
            for ci, res in enumerate(results):
                table[ci] = res
                if ci % 10 == 9 or ci == len(cands) - 1:
                    log(f"searched {ci + 1}/{len(cands)} candidates")
    finally:
        _WORK.clear()
    return us, evals, table


def peer_results(make: Callable[[Sequence], Any], us: Seq[Unit], evals: Dict[str, SeqEval]
                 ) -> Dict[Unit, Dict[str, Any]]:
    """A peer (a mot_eval Runner factory) with its defaults on every unit; ACF scores mapped
    into [0, 1] by :func:`acf_to_unit`."""
    out = {}
    for u in us:
        dets = load_det_set(u.seq, u.det_set)
        if u.det_set == "acf":
            dets = [np.c_[d[:, :4], acf_to_unit(d[:, 4]), d[:, 5]] for d in dets]
        runner = make(u.seq)
        out[u] = evals[u.seq.name].evaluate(
            track_rows(lambda d, r=runner: r.rows(r.step(r.prepare(d))), dets))
    return out


class CvResult(NamedTuple):
    choices: Dict[str, int]                   # held-out sequence -> candidate index
    oof: Dict[Unit, Dict[str, Any]]           # held-out results
    shipped: int                              # candidate index of the shipped defaults


def cross_validate(us: Seq[Unit], table: Table, peers: PeerTable = None) -> CvResult:
    """Leave one sequence out: choose on the others (:func:`fold_choice`, the peers' results on
    the same others), score the one left out."""
    seq_names = sorted({u.seq.name for u in us})
    choices: Dict[str, int] = {}
    inner: Dict[str, float] = {}
    oof: Dict[Unit, Dict[str, Any]] = {}
    for name in seq_names:
        train = [u for u in us if u.seq.name != name]
        ci, obj = fold_choice(table, train, peers)
        choices[name], inner[name] = ci, obj
        for u in us:
            if u.seq.name == name:
                oof[u] = table[ci][u]
    votes: Dict[int, List[str]] = {}
    for name, ci in choices.items():
        votes.setdefault(ci, []).append(name)
    shipped = max(votes, key=lambda ci: (len(votes[ci]),
                                         np.mean([inner[n] for n in votes[ci]])))
    return CvResult(choices, oof, shipped)
