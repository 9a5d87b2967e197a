"""Turn the ``sources:`` of a training config into :class:`~edge_agent.model.data.Sample` lists.

A source names its format (``yolo``, ``voc``, ``coco``, ``video`` or ``paste``: gun cut-outs
pasted into clip frames, :mod:`edge_agent.model.synth`), its folders, which head its
boxes belong to (``head``, with a class-name ``map`` into that head's classes), which heads it is
a verified negative for (``negatives``), optional file-name filters (``include`` / ``exclude``
prefixes; ``boxed: true`` keeps only images with a box, ``false`` only those without), which
part of a split file it takes (``split: {file, part}``), and how its images
are seen: ``zoom`` (training: enlarged by a factor in [low, high], as a tile of a far camera's
frame) and ``tiles`` (validation: run on tiles x tiles overlapping tiles, as the daemon does).

``python -m edge_agent.model.sources split IMAGES OUT.csv`` writes a split file: near-duplicate
images (dHash) and frames of one CCTV video segment always land on the same side.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import sys
from pathlib import Path
from typing import Any, Dict, List, Mapping, Sequence, Tuple

import cv2
import numpy as np

from edge_agent.model import data as D

FORMATS = ("yolo", "voc", "coco", "video", "paste")


def _get(src: Mapping[str, Any], key: str, where: str, default: Any = ...) -> Any:
    if key not in src:
        if default is ...:
            raise D.DataError(f"{where}: '{key}' missing")
        return default
    return src[key]


def _filters(items, src, where):
    inc = list(_get(src, "include", where, []) or [])
    exc = list(_get(src, "exclude", where, []) or [])
    boxed = _get(src, "boxed", where, None)
    if boxed not in (None, True, False):
        raise D.DataError(f"{where}: boxed: expected true or false, got {boxed!r}")
    out = []
    for it in items:
        name = Path(it[0]).name
        if inc and not any(name.startswith(p) for p in inc):
            continue
        if any(name.startswith(p) for p in exc):
            continue
        # a source's frames with a gun and those without drawn at their own rates
        if boxed is not None and (len(it[2]) > 0) != boxed:
            continue
        out.append(it)
    return out


def _split(items, src, where, base: Path):
    spec = _get(src, "split", where, None)
    if not spec:
        return items
    f = base / spec["file"]
    if not f.is_file():
        raise D.DataError(f"{where}: split file {f} missing")
    with open(f, newline="", encoding="utf-8") as fh:
        part = {row["image"]: row["split"] for row in csv.DictReader(fh)}
    want = spec["part"]
    missing = [Path(it[0]).name for it in items if Path(it[0]).name not in part]
    if missing:
        raise D.DataError(f"{f}: {len(missing)} images not in the split file, e.g. {missing[0]}")
    return [it for it in items if part[Path(it[0]).name] == want]


def video_frames(path: Path, every: int, start: float, end: float, cache: Path):
    """Every ``every``-th frame between fractions ``start`` and ``end`` of a video, as JPEGs."""
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise D.DataError(f"{path}: video does not open")
    n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    lo, hi = int(n * start), int(n * end)
    out_dir = cache / path.stem
    out_dir.mkdir(parents=True, exist_ok=True)
    items, i = [], 0
    try:
        while i < hi:
            ok, frame = cap.read()
            if not ok:
                break
            if i >= lo and (i - lo) % every == 0:
                f = out_dir / f"{i:06d}.jpg"
                if not f.is_file():  # written aside then renamed: a parallel run reads whole files
                    tmp = f.with_name(f"{f.stem}.{os.getpid()}.tmp.jpg")
                    cv2.imwrite(str(tmp), frame, [cv2.IMWRITE_JPEG_QUALITY, 92])
                    tmp.replace(f)
                items.append((f, (frame.shape[1], frame.shape[0]), D.EMPTY.copy()))
            i += 1
    finally:
        cap.release()
    if not items:
        raise D.DataError(f"{path}: no frames decoded in {start:.2f}..{end:.2f}")
    return items


def _read(src: Mapping[str, Any], classes: Sequence[str], where: str, base: Path, cache: Path):
    fmt = _get(src, "format", where)
    if fmt not in FORMATS:
        raise D.DataError(f"{where}: format {fmt!r} is not one of {', '.join(FORMATS)}")
    mapping = dict(_get(src, "map", where, {}) or {})
    if fmt == "yolo":
        names = list(_get(src, "classes", where))
        items = D.read_yolo(base / src["images"], base / src["labels"], names)
        # file class ids -> head class ids through the names and the map
        ids = [D._class_id(n, classes, mapping, where) for n in names]
        items = [(p, s, np.concatenate([b[:, :4], np.array(ids, np.float32)[b[:, 4].astype(int)]
                                        [:, None]], 1) if len(b) else b) for p, s, b in items]
    elif fmt == "voc":
        items = D.read_voc(base / src["images"], base / src["annots"], classes, mapping)
    elif fmt == "coco":
        items = D.read_coco(base / src["images"], base / src["annotations"], classes, mapping)
    elif fmt == "paste":
        items = _paste(src, classes, where, base, cache)
    else:
        items = video_frames(base / src["path"], int(_get(src, "every", where, 10)),
                             float(_get(src, "start", where, 0.0)),
                             float(_get(src, "end", where, 1.0)), cache)
    return items


def _paste(src: Mapping[str, Any], classes: Sequence[str], where: str, base: Path, cache: Path):
    """``format: paste``: gun cut-outs of ``objects`` (a yolo source, with its own filters and
    split) pasted into frames of ``backgrounds`` (video sources); see :mod:`synth`."""
    from edge_agent.model import synth

    obj = dict(_get(src, "objects", where))
    if obj.get("format", "yolo") != "yolo":
        raise D.DataError(f"{where}: objects must be a yolo source")
    ow = f"{where}.objects"
    objects = _split(_filters(_read({**obj, "format": "yolo"}, classes, ow, base, cache), obj, ow),
                     obj, ow, base)
    frames: List[Path] = []
    for n, bg in enumerate(_get(src, "backgrounds", where)):
        items = _read({**bg, "format": "video"}, classes, f"{where}.backgrounds[{n}]", base, cache)
        frames += [Path(p) for p, _, _ in items]
    try:
        recipe = synth.PasteRecipe(**{k: tuple(v) if isinstance(v, list) else v
                                      for k, v in dict(src.get("recipe") or {}).items()})
    except TypeError as exc:
        raise D.DataError(f"{where}: recipe: {exc}") from None
    persons = None
    if recipe.place == "hand":
        persons = _persons(frames, dict(_get(src, "persons", where)), where, base,
                           cache / f"{_get(src, 'name', where)}-persons.json")
    return synth.build(objects, frames, recipe, cache / str(_get(src, "name", where)), persons)


def _persons(frames: Sequence[Path], spec: Mapping[str, Any], where: str, base: Path,
             store: Path) -> Dict[str, np.ndarray]:
    """``persons: {model, score}``: per frame, the person boxes (x1, y1, x2, y2) of that COCO
    model with at least that score; cached in ``store`` (a JSON file) by frame path."""
    from edge_agent.model import teacher
    from edge_agent.model.trainconfig import TeacherConfig

    model = base / str(_get(spec, "model", f"{where}.persons"))
    score = float(_get(spec, "score", f"{where}.persons", 0.5))
    known: Dict[str, List[List[float]]] = {}
    if store.is_file():
        known = json.loads(store.read_text(encoding="utf-8"))
    todo = [str(f) for f in frames if str(f) not in known]
    if todo:
        engine = teacher.open_teacher(TeacherConfig(model=str(model), ignore=0.2), threads=1)
        try:
            for f in todo:
                img = cv2.imread(f, cv2.IMREAD_COLOR)
                if img is None:
                    raise D.DataError(f"{f}: background does not decode")
                known[f] = teacher.teacher_boxes(engine, img, "crowd").round(2).tolist()
        finally:
            engine.close()
        store.parent.mkdir(parents=True, exist_ok=True)
        tmp = store.with_name(f"{store.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(known), encoding="utf-8")
        tmp.replace(store)
    out = {}
    for f in frames:
        det = np.array(known[str(f)], np.float32).reshape(-1, 5)
        out[str(f)] = det[det[:, 4] >= score, :4]
    return out


def _zoom(src: Mapping[str, Any], where: str) -> Tuple[float, float]:
    """``zoom``: a number or [low, high], each > 0 (how much larger than a letterboxed frame)."""
    z = _get(src, "zoom", where, 1.0)
    lo, hi = (z, z) if isinstance(z, (int, float)) else tuple(z)
    if not 0 < float(lo) <= float(hi):
        raise D.DataError(f"{where}: zoom: expected a number or [low, high] with 0 < low <= high, "
                          f"got {z!r}")
    return float(lo), float(hi)


def build(sources: Sequence[Mapping[str, Any]], heads: Mapping[str, Sequence[str]],
          base: Path = Path("."), cache: Path = Path("out/model/frames")) -> List[D.Sample]:
    """Every configured source's samples; raises :class:`DataError` naming the bad source/file."""
    samples: List[D.Sample] = []
    for n, src in enumerate(sources):
        where = f"sources[{n}] ({src.get('name', '?')})"
        name = _get(src, "name", where)
        head = _get(src, "head", where, None)
        if head is not None and head not in heads:
            raise D.DataError(f"{where}: head {head!r} is not one of {list(heads)}")
        negs = list(_get(src, "negatives", where, []) or [])
        for h in negs:
            if h not in heads:
                raise D.DataError(f"{where}: negatives: {h!r} is not a head ({list(heads)})")
        classes = list(heads[head]) if head else []
        items = _read(src, classes, where, base, cache)
        items = _split(_filters(items, src, where), src, where, base)
        if not items:
            raise D.DataError(f"{where}: no images left after filters and split")
        zoom, tiles = _zoom(src, where), int(_get(src, "tiles", where, 1))
        if tiles < 1:
            raise D.DataError(f"{where}: tiles: expected an integer >= 1, got {tiles}")
        for path, size, boxes in items:
            s = D.Sample(Path(path), name, size, zoom=zoom, tiles=tiles)
            if head:
                s.boxes[head] = boxes
            for h in negs:
                s.boxes.setdefault(h, D.EMPTY.copy())
            samples.append(s)
    return samples


# --- split files ---------------------------------------------------------------------------------

_SEGMENT = re.compile(r"^(Cam\d+-.*?)(?:_frame|_\d+_jpg|\d+_jpg)")


def group_key(name: str) -> str:
    """The upstream source of an rf-gun-detection image, from its file name."""
    if name.startswith("Cam"):
        return "cctv"
    if name.startswith("armas"):
        return "ugr"
    return "openimages"


def make_split(images: Path, out: Path, val_fraction: float = 0.2, seed: int = 0) -> Dict[str, int]:
    """Write ``image,source,group,split`` rows; near-duplicates and CCTV segments kept together."""
    paths = D.list_images(images)
    near = D.group_near_duplicates(paths)
    parent = list(range(len(paths)))

    def find(i):
        while parent[i] != i:
            i = parent[i]
        return i

    first: Dict[str, int] = {}
    for i, p in enumerate(paths):
        keys = [f"dh:{near[i]}"]
        if p.name.startswith("Cam"):  # frames of one video segment are near-duplicates too
            m = _SEGMENT.match(p.name)
            keys.append(f"seg:{m.group(1) if m else p.name.split('_jpg')[0]}")
        for k in keys:
            if k in first:
                parent[find(i)] = find(first[k])
            else:
                first[k] = i
    group = [find(i) for i in range(len(paths))]
    src = [group_key(p.name) for p in paths]
    splits = ["train"] * len(paths)
    counts: Dict[str, int] = {}
    for name in sorted(set(src)):
        idx = [i for i in range(len(paths)) if src[i] == name]
        for i, v in zip(idx, D.split_groups([group[i] for i in idx], val_fraction, seed)):
            splits[i] = "val" if v else "train"
            counts[f"{name}_{splits[i]}"] = counts.get(f"{name}_{splits[i]}", 0) + 1
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["image", "source", "group", "split"])
        for i, p in enumerate(paths):
            w.writerow([p.name, src[i], group[i], splits[i]])
    return counts


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m edge_agent.model.sources")
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("split", help="write a near-duplicate-aware train/val split file")
    s.add_argument("images")
    s.add_argument("out")
    s.add_argument("--val", type=float, default=0.2)
    s.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    print(make_split(Path(a.images), Path(a.out), a.val, a.seed))
    return 0


if __name__ == "__main__":
    sys.exit(main())
