"""Surveillance-like gun images made from permissive material (the ``paste`` source format).

A wide frame of a permissive clip (a car park, a shop floor, a room, seen from above) gets one to
three *cut-outs* of gun photos pasted into it, each shrunk so its gun is ``gun_px`` pixels long
at the model's input (a ceiling camera's 5-40 px), plus *decoys* (cut-outs of the same photos
without a gun in them, so a pasted patch is not itself the cue). A cut-out is the gun's box grown
by ``context`` (the hand and arm around it), blended in through a feathered elliptical mask, then
blurred as a far camera blurs it; the composed frame is scaled to the model's input and saved as
a JPEG of random quality (the camera's compression). The labels are the pasted guns' boxes.

With ``place: hand`` a gun goes into a person's hand instead of anywhere: the person boxes of
the background frame (the COCO teacher's, score >= 0.5, given to :func:`build`), the gun's longer
side ``gun_of_person`` x the person's height, its centre at the left or right edge of the box at
40-65 % of the height from the top (where a held or raised pistol is), the cut-out grown by
``context`` only (the hand around the gun). Frames with no person of ``min_person_px`` are not
used.

What is synthetic is exactly that: the placement, scale, blur and compression; the guns, hands,
persons and backgrounds are real photos and real clip frames. The images are written once into the
training cache (``out/model/frames/<name>``) and rebuilt only when the recipe changes.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np

from edge_agent.model import data as D

Item = Tuple[Path, Tuple[int, int], np.ndarray]


@dataclass(frozen=True)
class PasteRecipe:
    """How the composites are made (every field is part of the cache key)."""

    count: int = 1200
    gun_px: Tuple[float, float] = (5.0, 40.0)  # gun's longer side at the model input, log-uniform
    per_image: Tuple[int, int] = (1, 3)
    decoys: Tuple[int, int] = (0, 2)
    context: float = 1.0  # cut-out = gun box grown by this x its size on each side
    blur: Tuple[float, float] = (0.0, 1.2)  # Gaussian sigma (input pixels) on the cut-out
    jpeg: Tuple[int, int] = (35, 90)
    grey: float = 0.2  # probability of a desaturated frame (night / cheap cameras)
    input_size: int = 416
    seed: int = 0
    place: str = "anywhere"  # or "hand": at a person's hand (module docstring)
    gun_of_person: Tuple[float, float] = (0.08, 0.16)  # gun's longer side / person height
    min_person_px: float = 40.0  # a person shorter than this at the input gets no gun

    def __post_init__(self) -> None:
        if self.place not in ("anywhere", "hand"):
            raise TypeError(f"place must be 'anywhere' or 'hand', got {self.place!r}")


@dataclass
class _Pool:
    """Gun photos (with their boxes) and background frames to compose from."""

    objects: List[Item]
    backgrounds: List[Path] = field(default_factory=list)


def _cutout(img: np.ndarray, box: np.ndarray, context: float, rng: random.Random
            ) -> Tuple[int, int, int, int]:
    """The region around ``box`` (x1, y1, x2, y2) grown by ``context`` +-30 %, clipped."""
    x1, y1, x2, y2 = box[:4]
    bw, bh = x2 - x1, y2 - y1
    g = context * rng.uniform(0.7, 1.3)
    h, w = img.shape[:2]
    return (max(0, int(x1 - g * bw)), max(0, int(y1 - g * bh)),
            min(w, int(math.ceil(x2 + g * bw))), min(h, int(math.ceil(y2 + g * bh))))


def _decoy(img: np.ndarray, boxes: np.ndarray, rng: random.Random
           ) -> Optional[Tuple[int, int, int, int]]:
    """A region of ``img`` that overlaps no gun box, or None when none was found."""
    h, w = img.shape[:2]
    for _ in range(10):
        cw, ch = int(w * rng.uniform(0.15, 0.4)), int(h * rng.uniform(0.15, 0.4))
        x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
        if all(b[2] <= x or b[0] >= x + cw or b[3] <= y or b[1] >= y + ch for b in boxes):
            return x, y, x + cw, y + ch
    return None


def _mask(h: int, w: int) -> np.ndarray:
    """A feathered ellipse filling an h x w patch (1 inside, fading to 0 at the edge)."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    r = ((xx - (w - 1) / 2) / max(w / 2, 1)) ** 2 + ((yy - (h - 1) / 2) / max(h / 2, 1)) ** 2
    return np.clip((1.0 - r) / 0.35, 0.0, 1.0)[..., None]


def _paste(canvas: np.ndarray, patch: np.ndarray, x: int, y: int) -> None:
    h, w = patch.shape[:2]
    m = _mask(h, w)
    roi = canvas[y:y + h, x:x + w].astype(np.float32)
    canvas[y:y + h, x:x + w] = (patch.astype(np.float32) * m + roi * (1 - m)).astype(np.uint8)


def _scaled(img: np.ndarray, region, scale: float, sigma: float) -> np.ndarray:
    x1, y1, x2, y2 = region
    crop = img[y1:y2, x1:x2]
    size = (max(2, round((x2 - x1) * scale)), max(2, round((y2 - y1) * scale)))
    out = cv2.resize(crop, size, interpolation=cv2.INTER_AREA)
    if sigma > 0.3:
        out = cv2.GaussianBlur(out, (0, 0), sigma)
    return out


def carriers(persons: np.ndarray, recipe: PasteRecipe, scale: float) -> np.ndarray:
    """The person boxes (x1, y1, x2, y2 in background pixels) tall enough at the model input."""
    p = np.asarray(persons, np.float32).reshape(-1, 4)
    return p[(p[:, 3] - p[:, 1]) * scale >= recipe.min_person_px]


def _hand_spot(person: np.ndarray, gun_long: float, rng: random.Random) -> Tuple[float, float]:
    """Centre of a gun held by ``person`` (input pixels): a side of the box, at hand height."""
    x1, y1, x2, y2 = person[:4]
    w, h = x2 - x1, y2 - y1
    side = x1 if rng.random() < 0.5 else x2
    cx = side + rng.uniform(-0.15, 0.15) * w + (gun_long / 3 if side == x2 else -gun_long / 3)
    return cx, y1 + rng.uniform(0.40, 0.65) * h


def compose(bg: np.ndarray, objects: Sequence[Item], recipe: PasteRecipe,
            rng: random.Random, persons: Optional[np.ndarray] = None
            ) -> Tuple[np.ndarray, np.ndarray]:
    """One composite at the model's input scale (longer side ``input_size``) and its gun boxes;
    ``persons`` (background pixels) are where ``place: hand`` puts the guns."""
    r = recipe.input_size / max(bg.shape[:2])
    canvas = cv2.resize(bg, (round(bg.shape[1] * r), round(bg.shape[0] * r)),
                        interpolation=cv2.INTER_AREA)
    H, W = canvas.shape[:2]
    hands = carriers(persons if persons is not None else np.zeros((0, 4)), recipe, r) * r
    boxes = []
    for _ in range(rng.randint(*recipe.per_image)):
        path, _, gts = objects[rng.randrange(len(objects))]
        img = cv2.imread(str(path))
        if img is None or len(gts) == 0:
            continue
        gun = gts[rng.randrange(len(gts))]
        region = _cutout(img, gun, recipe.context, rng)
        lo, hi = recipe.gun_px
        target = math.exp(rng.uniform(math.log(lo), math.log(hi)))
        person = None
        if recipe.place == "hand":
            if not len(hands):
                break
            person = hands[rng.randrange(len(hands))]
            target = (person[3] - person[1]) * rng.uniform(*recipe.gun_of_person)
        scale = target / max(gun[2] - gun[0], gun[3] - gun[1])
        patch = _scaled(img, region, scale, rng.uniform(*recipe.blur))
        ph, pw = patch.shape[:2]
        if ph >= H or pw >= W:
            continue
        if person is None:
            x, y = rng.randint(0, W - pw), rng.randint(0, H - ph)
        else:  # the gun's own centre (not the cut-out's) at the hand
            cx, cy = _hand_spot(person, target, rng)
            gcx = ((gun[0] + gun[2]) / 2 - region[0]) * scale
            gcy = ((gun[1] + gun[3]) / 2 - region[1]) * scale
            x = int(min(max(round(cx - gcx), 0), W - pw))
            y = int(min(max(round(cy - gcy), 0), H - ph))
        _paste(canvas, patch, x, y)
        # every gun of the photo that lies (mostly) inside the cut-out is labelled
        for g in gts:
            gx1, gy1 = max(g[0], region[0]), max(g[1], region[1])
            gx2, gy2 = min(g[2], region[2]), min(g[3], region[3])
            if gx2 <= gx1 or gy2 <= gy1:
                continue
            if (gx2 - gx1) * (gy2 - gy1) < 0.6 * (g[2] - g[0]) * (g[3] - g[1]):
                continue
            b = [x + (gx1 - region[0]) * scale, y + (gy1 - region[1]) * scale,
                 x + (gx2 - region[0]) * scale, y + (gy2 - region[1]) * scale, g[4]]
            if b[2] - b[0] >= 2 and b[3] - b[1] >= 2:
                boxes.append(b)
    for _ in range(rng.randint(*recipe.decoys)):
        path, _, gts = objects[rng.randrange(len(objects))]
        img = cv2.imread(str(path))
        region = None if img is None else _decoy(img, gts, rng)
        if region is None:
            continue
        size = math.exp(rng.uniform(math.log(recipe.gun_px[0] * 2), math.log(recipe.gun_px[1] * 3)))
        scale = size / max(region[2] - region[0], region[3] - region[1])
        patch = _scaled(img, region, scale, rng.uniform(*recipe.blur))
        ph, pw = patch.shape[:2]
        if ph < H and pw < W:
            _paste(canvas, patch, rng.randint(0, W - pw), rng.randint(0, H - ph))
    if rng.random() < recipe.grey:
        grey = cv2.cvtColor(canvas, cv2.COLOR_BGR2GRAY)
        canvas = cv2.addWeighted(canvas, 0.3, cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR), 0.7, 0)
    return canvas, np.array(boxes, np.float32).reshape(-1, 5)


def _key(recipe: PasteRecipe, objects: Sequence[Item], backgrounds: Sequence[Path]) -> str:
    h = hashlib.sha256(json.dumps(asdict(recipe), sort_keys=True).encode())
    for p, _, b in objects:
        h.update(f"{Path(p).name}:{b.round(1).tolist()}".encode())
    for p in backgrounds:
        h.update(str(p).encode())
    return h.hexdigest()[:16]


def _input_scale(path: Path, recipe: PasteRecipe) -> float:
    w, h = D.image_size(Path(path))
    return recipe.input_size / max(w, h)


def build(objects: Sequence[Item], backgrounds: Sequence[Path], recipe: PasteRecipe,
          out_dir: Path, persons: Optional[Dict[str, np.ndarray]] = None) -> List[Item]:
    """Write ``recipe.count`` composites into ``out_dir`` (reused when the recipe is the same).

    ``persons`` (background path -> person boxes in its pixels) is required by ``place: hand``,
    which uses only the frames with a person tall enough to carry a gun.
    """
    guns = [it for it in objects if len(it[2])]
    if not guns:
        raise D.DataError("paste: no object image has a gun box")
    if recipe.place == "hand":
        if persons is None:
            raise D.DataError("paste: place: hand needs the person boxes of the backgrounds")
        backgrounds = [b for b in backgrounds if len(carriers(
            persons.get(str(b), np.zeros((0, 4))), recipe, _input_scale(b, recipe)))]
    if not backgrounds:
        raise D.DataError("paste: no background frames (with a carrier, for place: hand)")
    key = _key(recipe, guns, backgrounds)
    out_dir.mkdir(parents=True, exist_ok=True)
    index = out_dir / "index.json"
    if index.is_file():
        meta = json.loads(index.read_text())
        if meta.get("key") == key:
            return [(out_dir / n, tuple(s), np.array(b, np.float32).reshape(-1, 5))
                    for n, s, b in meta["items"]]
    rng = random.Random(recipe.seed)
    items, rows = [], []
    for i in range(recipe.count):
        bg_path = backgrounds[rng.randrange(len(backgrounds))]
        bg = cv2.imread(str(bg_path))
        if bg is None:
            raise D.DataError(f"{bg_path}: background does not decode")
        img, boxes = compose(bg, guns, recipe, rng,
                             None if persons is None else persons.get(str(bg_path)))
        f = out_dir / f"paste_{i:05d}.jpg"
        tmp = f.with_name(f"{f.stem}.{os.getpid()}.tmp.jpg")
        cv2.imwrite(str(tmp), img, [cv2.IMWRITE_JPEG_QUALITY, rng.randint(*recipe.jpeg)])
        tmp.replace(f)
        size = (img.shape[1], img.shape[0])
        items.append((f, size, boxes))
        rows.append([f.name, list(size), boxes.tolist()])
    index.write_text(json.dumps({"key": key, "recipe": asdict(recipe), "items": rows}))
    return items
