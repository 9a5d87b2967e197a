"""Training data: YOLO txt, Pascal VOC xml and COCO json readers, and the combined dataset.

A :class:`Sample` is one image with, per head, either its boxes (the head is *labelled*: an
empty array is a verified negative) or nothing (the head is unlabelled there: no loss for it).
Teacher pseudo-labels add boxes for a head plus *ignore* boxes (no objectness loss inside).

Every reader validates what it reads and raises :class:`DataError` naming the file: a missing
image, a missing label file (an *empty* label file is a valid negative), a box outside the image,
an unknown class, an image that does not decode.
"""

from __future__ import annotations

import json
import random
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, FrozenSet, Iterable, List, Mapping, Optional, Sequence, Tuple

import cv2
import numpy as np

from edge_agent.model.trainconfig import Augment

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp")
EMPTY = np.zeros((0, 5), np.float32)  # x1, y1, x2, y2, class id (pixels of the image)
EDGE_SLACK = 1.0  # pixels a box may pass the image edge (rounding in exported labels)


class DataError(ValueError):
    """A dataset file is missing or wrong; the message names the file."""


@dataclass
class Sample:
    """One training or validation image.

    ``boxes[head]`` (K x 5: x1, y1, x2, y2, class) exists for every head the image labels;
    ``ignore[head]`` (K x 4) are regions without objectness loss for that head.
    """

    image: Path
    source: str
    size: Tuple[int, int]  # width, height
    boxes: Dict[str, np.ndarray] = field(default_factory=dict)
    ignore: Dict[str, np.ndarray] = field(default_factory=dict)
    # training: the image enlarged by a factor drawn from this range on top of the augment's
    # scale, as a tile of a far camera's frame is (``inference.tiles``)
    zoom: Tuple[float, float] = (1.0, 1.0)
    tiles: int = 1  # validation: run on ``tiles`` x ``tiles`` tiles, as the daemon would

    @property
    def heads(self) -> FrozenSet[str]:
        return frozenset(self.boxes)


# --- image and box checks -----------------------------------------------------------------------


def image_size(path: Path) -> Tuple[int, int]:
    """(width, height) of an image file; :class:`DataError` when missing or not decodable."""
    if not path.is_file():
        raise DataError(f"{path}: image file missing")
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise DataError(f"{path}: image does not decode (corrupt or not an image)")
    return img.shape[1], img.shape[0]


def check_boxes(boxes: np.ndarray, size: Tuple[int, int], where: str) -> np.ndarray:
    """Clip boxes within :data:`EDGE_SLACK` of the edge; raise for boxes outside or empty."""
    w, h = size
    for b in boxes:
        x1, y1, x2, y2 = b[:4]
        if not (x2 > x1 and y2 > y1):
            raise DataError(f"{where}: empty box {[round(float(v), 2) for v in b[:4]]}")
        if x1 < -EDGE_SLACK or y1 < -EDGE_SLACK or x2 > w + EDGE_SLACK or y2 > h + EDGE_SLACK:
            raise DataError(f"{where}: box {[round(float(v), 2) for v in b[:4]]} outside the "
                            f"{w}x{h} image")
    out = boxes.astype(np.float32).reshape(-1, 5)
    np.clip(out[:, 0:3:2], 0, w, out=out[:, 0:3:2])
    np.clip(out[:, 1:4:2], 0, h, out=out[:, 1:4:2])
    return out


def _class_id(name, classes: Sequence[str], mapping: Mapping[str, str], where: str) -> int:
    name = mapping.get(name, name)
    if name not in classes:
        raise DataError(f"{where}: unknown class {name!r} (known: {list(classes)})")
    return list(classes).index(name)


def list_images(folder: Path) -> List[Path]:
    if not folder.is_dir():
        raise DataError(f"{folder}: image folder missing")
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTS)


# --- YOLO txt -----------------------------------------------------------------------------------


Item = Tuple[Path, Tuple[int, int], np.ndarray]  # image, (width, height), boxes


def read_yolo(images: Path, labels: Path, classes: Sequence[str]) -> List[Item]:
    """YOLO folder pair: ``labels/<stem>.txt`` lines ``class cx cy w h`` (0..1) per image.

    Returns (image, (w, h), boxes in pixels) per image. An empty txt is a negative; a missing txt
    or a txt without an image is an error.
    """
    images, labels = Path(images), Path(labels)
    out = []
    imgs = list_images(images)
    stems = {p.stem for p in imgs}
    if labels.is_dir():
        for txt in sorted(labels.glob("*.txt")):
            if txt.stem not in stems:
                raise DataError(f"{txt}: label file without an image in {images}")
    for img in imgs:
        txt = labels / f"{img.stem}.txt"
        if not txt.is_file():
            raise DataError(f"{txt}: label file missing for {img.name} (an empty file marks a "
                            "negative)")
        size = image_size(img)
        rows = []
        for n, line in enumerate(txt.read_text(encoding="utf-8").splitlines(), 1):
            parts = line.split()
            if not parts:
                continue
            where = f"{txt}:{n}"
            if len(parts) != 5:
                raise DataError(f"{where}: expected 'class cx cy w h', got {line!r}")
            try:
                cid = int(parts[0])
                cx, cy, bw, bh = (float(v) for v in parts[1:])
            except ValueError:
                raise DataError(f"{where}: not numbers: {line!r}") from None
            if not 0 <= cid < len(classes):
                raise DataError(f"{where}: unknown class id {cid} (classes: {list(classes)})")
            w, h = size
            rows.append([(cx - bw / 2) * w, (cy - bh / 2) * h, (cx + bw / 2) * w,
                         (cy + bh / 2) * h, cid])
        boxes = np.array(rows, np.float32).reshape(-1, 5)
        out.append((img, size, check_boxes(boxes, size, str(txt))))
    return out


def write_yolo(items, images: Path, labels: Path) -> None:
    """Write (image, size, boxes) items as YOLO txt files (images are not copied)."""
    labels.mkdir(parents=True, exist_ok=True)
    for img, (w, h), boxes in items:
        lines = [f"{int(b[4])} {(b[0] + b[2]) / 2 / w:.6f} {(b[1] + b[3]) / 2 / h:.6f} "
                 f"{(b[2] - b[0]) / w:.6f} {(b[3] - b[1]) / h:.6f}" for b in boxes]
        (labels / f"{Path(img).stem}.txt").write_text("".join(f"{x}\n" for x in lines))


# --- Pascal VOC xml -----------------------------------------------------------------------------


def read_voc(images: Path, annots: Path, classes: Sequence[str],
             mapping: Optional[Mapping[str, str]] = None):
    """VOC folder pair: ``annots/<stem>.xml`` per image in ``images``."""
    images, annots = Path(images), Path(annots)
    mapping = mapping or {}
    out = []
    for img in list_images(images):
        xml = annots / f"{img.stem}.xml"
        if not xml.is_file():
            raise DataError(f"{xml}: annotation file missing for {img.name}")
        try:
            root = ET.parse(xml).getroot()
        except ET.ParseError as exc:
            raise DataError(f"{xml}: not valid XML: {exc}") from None
        size = image_size(img)
        rows = []
        for obj in root.iter("object"):
            cid = _class_id((obj.findtext("name") or "").strip(), classes, mapping, str(xml))
            bb = obj.find("bndbox")
            try:
                vals = [float(bb.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax")]
            except (TypeError, ValueError, AttributeError):
                raise DataError(f"{xml}: object without a numeric bndbox") from None
            rows.append(vals + [cid])
        boxes = np.array(rows, np.float32).reshape(-1, 5)
        out.append((img, size, check_boxes(boxes, size, str(xml))))
    return out


def write_voc(items, annots: Path, classes: Sequence[str]) -> None:
    annots.mkdir(parents=True, exist_ok=True)
    for img, (w, h), boxes in items:
        root = ET.Element("annotation")
        ET.SubElement(root, "filename").text = Path(img).name
        sz = ET.SubElement(root, "size")
        for k, v in (("width", w), ("height", h), ("depth", 3)):
            ET.SubElement(sz, k).text = str(v)
        for b in boxes:
            o = ET.SubElement(root, "object")
            ET.SubElement(o, "name").text = classes[int(b[4])]
            bb = ET.SubElement(o, "bndbox")
            for k, v in zip(("xmin", "ymin", "xmax", "ymax"), b[:4]):
                ET.SubElement(bb, k).text = f"{float(v):.3f}"
        ET.ElementTree(root).write(annots / f"{Path(img).stem}.xml")


# --- COCO json ----------------------------------------------------------------------------------


def read_coco(images: Path, ann_file: Path, classes: Sequence[str],
              mapping: Optional[Mapping[str, str]] = None):
    """COCO detection json (``images``, ``annotations`` with ``bbox`` x, y, w, h, ``categories``).

    Images listed without annotations are negatives.
    """
    images, ann_file = Path(images), Path(ann_file)
    mapping = mapping or {}
    try:
        data = json.loads(ann_file.read_text(encoding="utf-8"))
    except OSError as exc:
        raise DataError(f"{ann_file}: cannot read: {exc.strerror or exc}") from None
    except json.JSONDecodeError as exc:
        raise DataError(f"{ann_file}:{exc.lineno}: not valid JSON: {exc.msg}") from None
    try:
        cats = {c["id"]: c["name"] for c in data["categories"]}
        imgs = {i["id"]: i for i in data["images"]}
        anns = data.get("annotations", [])
    except (KeyError, TypeError) as exc:
        raise DataError(f"{ann_file}: not a COCO detection file (missing {exc})") from None
    rows: Dict[int, list] = {k: [] for k in imgs}
    for a in anns:
        where = f"{ann_file}: annotation {a.get('id')}"
        if a.get("image_id") not in imgs:
            raise DataError(f"{where}: unknown image_id {a.get('image_id')}")
        if a.get("category_id") not in cats:
            raise DataError(f"{where}: unknown category_id {a.get('category_id')}")
        cid = _class_id(cats[a["category_id"]], classes, mapping, where)
        x, y, w, h = (float(v) for v in a["bbox"])
        rows[a["image_id"]].append([x, y, x + w, y + h, cid])
    out = []
    for iid, info in sorted(imgs.items()):
        img = images / info["file_name"]
        size = image_size(img)
        if (info.get("width"), info.get("height")) not in ((None, None), size):
            raise DataError(f"{ann_file}: image {info['file_name']} is {size[0]}x{size[1]}, "
                            f"the json says {info.get('width')}x{info.get('height')}")
        boxes = np.array(rows[iid], np.float32).reshape(-1, 5)
        out.append((img, size, check_boxes(boxes, size, f"{ann_file}: {info['file_name']}")))
    return out


def write_coco(items, ann_file: Path, classes: Sequence[str]) -> None:
    images, anns = [], []
    for n, (img, (w, h), boxes) in enumerate(items, 1):
        images.append({"id": n, "file_name": Path(img).name, "width": w, "height": h})
        for b in boxes:
            anns.append({"id": len(anns) + 1, "image_id": n, "category_id": int(b[4]) + 1,
                         "bbox": [float(b[0]), float(b[1]), float(b[2] - b[0]),
                                  float(b[3] - b[1])], "area": float((b[2] - b[0]) * (b[3] - b[1])),
                         "iscrowd": 0})
    cats = [{"id": i + 1, "name": c} for i, c in enumerate(classes)]
    ann_file.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))


# --- near-duplicate aware splitting ---------------------------------------------------------------


def dhash(path: Path) -> int:
    """64-bit difference hash of an image (near-duplicates differ in few bits)."""
    g = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if g is None:
        raise DataError(f"{path}: image does not decode")
    s = cv2.resize(g, (9, 8), interpolation=cv2.INTER_AREA).astype(np.int16)
    bits = (s[:, 1:] > s[:, :-1]).ravel()
    return int(sum(1 << i for i, b in enumerate(bits) if b))


def group_near_duplicates(paths: Sequence[Path], max_bits: int = 8) -> List[int]:
    """Group id per path: images whose dHashes differ in <= max_bits bits share a group."""
    hashes = np.array([dhash(p) for p in paths], np.uint64)
    parent = list(range(len(paths)))

    def find(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i in range(len(paths)):
        x = np.bitwise_xor(hashes[i + 1:], hashes[i])
        dist = np.array([bin(int(v)).count("1") for v in x], np.int64)
        for j in np.flatnonzero(dist <= max_bits):
            parent[find(i + 1 + int(j))] = find(i)
    return [find(i) for i in range(len(paths))]


def split_groups(groups: Sequence, val_fraction: float, seed: int) -> List[bool]:
    """True (validation) or False per item, whole groups at a time, about ``val_fraction``."""
    uniq = sorted(set(groups), key=str)
    random.Random(seed).shuffle(uniq)
    sizes = {g: 0 for g in uniq}
    for g in groups:
        sizes[g] += 1
    want, got, val = val_fraction * len(groups), 0, set()
    for g in uniq:
        if got >= want:
            break
        val.add(g)
        got += sizes[g]
    return [g in val for g in groups]


# --- augmentation and batching --------------------------------------------------------------------


def letterbox_matrix(size: Tuple[int, int], out_hw: Tuple[int, int]) -> np.ndarray:
    """2 x 3 affine of the daemon's letterbox: scale to fit, top-left."""
    w, h = size
    r = min(out_hw[0] / h, out_hw[1] / w)
    return np.array([[r, 0, 0], [0, r, 0]], np.float64)


def _random_matrix(size, out_hw, aug: Augment, rng: random.Random,
                   zoom: Tuple[float, float] = (1.0, 1.0)) -> Tuple[np.ndarray, bool]:
    w, h = size
    H, W = out_hw
    r = min(H / h, W / w) * rng.uniform(*aug.scale) * rng.uniform(*zoom)
    flip = rng.random() < aug.flip
    nw, nh = w * r, h * r
    # place the scaled image anywhere that keeps it overlapping the canvas by translate slack
    tx = rng.uniform(min(0, W - nw) - aug.translate * W, max(0, W - nw) + aug.translate * W)
    ty = rng.uniform(min(0, H - nh) - aug.translate * H, max(0, H - nh) + aug.translate * H)
    if rng.random() < 0.5:  # half the time the daemon's own top-left placement
        tx, ty = (0.0 if nw <= W else tx), (0.0 if nh <= H else ty)
    sx = -r if flip else r
    m = np.array([[sx, 0, tx + (nw if flip else 0)], [0, r, ty]], np.float64)
    return m, flip


def _hsv(img: np.ndarray, gains: Tuple[float, float, float], rng: random.Random) -> np.ndarray:
    g = [rng.uniform(-1, 1) * k + 1 for k in gains]
    hue, sat, val = cv2.split(cv2.cvtColor(img, cv2.COLOR_BGR2HSV))
    x = np.arange(256, dtype=np.float32)
    lut_h = ((x * g[0]) % 180).astype(np.uint8)
    lut_s = np.clip(x * g[1], 0, 255).astype(np.uint8)
    lut_v = np.clip(x * g[2], 0, 255).astype(np.uint8)
    hsv = cv2.merge((cv2.LUT(hue, lut_h), cv2.LUT(sat, lut_s), cv2.LUT(val, lut_v)))
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)


def warp_boxes(boxes: np.ndarray, m: np.ndarray, out_hw, min_side: float = 2.0,
               min_visible: float = 0.4) -> np.ndarray:
    """Apply an axis-aligned affine (scale, flip, shift) to boxes, clip, drop mostly-cut ones."""
    if len(boxes) == 0:
        return boxes.reshape(0, boxes.shape[1] if boxes.ndim == 2 else 5)
    b = boxes.copy()
    xs = b[:, [0, 2]] * m[0, 0] + m[0, 2]
    ys = b[:, [1, 3]] * m[1, 1] + m[1, 2]
    x1, x2 = xs.min(1), xs.max(1)
    y1, y2 = ys.min(1), ys.max(1)
    area = (x2 - x1) * (y2 - y1)
    H, W = out_hw
    cx1, cy1 = np.clip(x1, 0, W), np.clip(y1, 0, H)
    cx2, cy2 = np.clip(x2, 0, W), np.clip(y2, 0, H)
    vis = (cx2 - cx1) * (cy2 - cy1) / np.maximum(area, 1e-6)
    keep = (cx2 - cx1 >= min_side) & (cy2 - cy1 >= min_side) & (vis >= min_visible)
    b[:, 0], b[:, 1], b[:, 2], b[:, 3] = cx1, cy1, cx2, cy2
    return b[keep]


class CombinedDataset:
    """Samples from many sources -> fixed-size model inputs with per-head targets and masks."""

    def __init__(self, samples: Sequence[Sample], heads: Sequence[str], input_hw: Tuple[int, int],
                 augment: Optional[Augment] = None, seed: int = 0, pad_value: int = 114):
        if not samples:
            raise DataError("the dataset has no samples")
        self.samples = list(samples)
        self.heads = list(heads)
        self.input_hw = tuple(input_hw)
        self.augment = augment
        self.pad = pad_value
        self.rng = random.Random(seed)

    def __len__(self) -> int:
        return len(self.samples)

    def load(self, i: int) -> np.ndarray:
        s = self.samples[i]
        img = cv2.imread(str(s.image), cv2.IMREAD_COLOR)
        if img is None:
            raise DataError(f"{s.image}: image does not decode (corrupt or not an image)")
        return img

    def __getitem__(self, i: int):
        """(image CHW float32 BGR 0..255, {head: boxes K x 5 or None}, {head: ignore K x 4})."""
        s = self.samples[i]
        img = self.load(i)
        H, W = self.input_hw
        size = (img.shape[1], img.shape[0])
        if self.augment is not None:
            m, _ = _random_matrix(size, self.input_hw, self.augment, self.rng, s.zoom)
        else:
            m = letterbox_matrix(size, self.input_hw)
        out = cv2.warpAffine(img, m, (W, H), flags=cv2.INTER_LINEAR,
                             borderMode=cv2.BORDER_CONSTANT, borderValue=(self.pad,) * 3)
        if self.augment is not None and self.augment.hsv:
            out = _hsv(out, self.augment.hsv, self.rng)
        boxes, ignore = {}, {}
        for h in self.heads:
            if h in s.boxes:
                boxes[h] = warp_boxes(s.boxes[h], m, self.input_hw)
            else:
                boxes[h] = None
            ig = s.ignore.get(h)
            if ig is not None and len(ig):
                pad5 = np.concatenate([ig[:, :4], np.zeros((len(ig), 1), np.float32)], 1)
                ignore[h] = warp_boxes(pad5, m, self.input_hw, 1.0, 0.2)[:, :4]
            else:
                ignore[h] = np.zeros((0, 4), np.float32)
        chw = np.ascontiguousarray(out.transpose(2, 0, 1), dtype=np.float32)
        return chw, boxes, ignore


def balanced_weights(samples: Sequence[Sample], source_weights: Optional[Mapping[str, float]] = None
                     ) -> np.ndarray:
    """Per-sample sampling weight so every source is drawn equally often (times its weight)."""
    counts: Dict[str, int] = {}
    for s in samples:
        counts[s.source] = counts.get(s.source, 0) + 1
    sw = source_weights or {}
    w = np.array([sw.get(s.source, 1.0) / counts[s.source] for s in samples], np.float64)
    return w / w.sum()


def epoch_indices(weights: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` sample indices drawn by ``weights`` (with replacement)."""
    return rng.choice(len(weights), size=n, replace=True, p=weights)


def collate(items: Iterable):
    """List of dataset items -> (N x 3 x H x W array, per-head box lists, per-head ignore lists)."""
    items = list(items)
    imgs = np.stack([it[0] for it in items])
    heads = list(items[0][1])
    boxes = {h: [it[1][h] for it in items] for h in heads}
    ignore = {h: [it[2][h] for it in items] for h in heads}
    return imgs, boxes, ignore


def summary(samples: Sequence[Sample]) -> Dict[str, Dict[str, int]]:
    """Per source: images, boxes per head, negatives per head (for the manifest and card)."""
    out: Dict[str, Dict[str, int]] = {}
    for s in samples:
        d = out.setdefault(s.source, {"images": 0})
        d["images"] += 1
        for h, b in s.boxes.items():
            d[f"{h}_boxes"] = d.get(f"{h}_boxes", 0) + int(len(b))
            if len(b) == 0:
                d[f"{h}_negatives"] = d.get(f"{h}_negatives", 0) + 1
    return out
