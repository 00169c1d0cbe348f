"""The embedded dataset: a deterministic generator of a small Pascal VOC-layout set.

Each object class is a distinct shape with a distinct texture family; every object's two colours
are drawn from the same distribution as the background's, so colour alone never tells the class
(they differ in luminance, as real textures do: chroma-only contrast made the default run learn
at half the pace).
Objects (1..max_objects per image, 15-60% of the image side) may occlude each other and are drawn
on cluttered backgrounds; like VOC's "void" contours, a 255 band straddles every visible boundary.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image

from src.data.palette import save_palette_png
from src.utils.errors import UserError
from src.utils.files import write_json_atomic

SYNTHETIC_CLASSES: tuple[str, ...] = ("background", "disc", "square", "triangle", "ring", "cross")
GENERATOR_VERSION = 2  # bump whenever the drawing changes, so stamped datasets are regenerated
STAMP_NAME = "seglab_synthetic.json"
IGNORE_INDEX = 255
# The split is part of each image's seed, so the val images stay put when num_train changes.
_SPLIT_CODES = {"train": 0, "val": 1}
_SAMPLE_ID = re.compile(r"(train|val)_\d{5}")
_SUBPIXEL = 4  # cv2 drawing `shift`: coordinates carry 4 fractional bits
_MIN_SIZE, _MAX_SIZE = 0.15, 0.60  # object extent as a fraction of the image's shorter side
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)  # ITU-R BT.601 weights
_PERIOD = (7.0, 12.0)  # texture period in pixels: still >= 3.5 px after a 0.5x scale augmentation


@dataclass(frozen=True)
class SyntheticSpec:
    """Parameters of the generated set; any change (or a new GENERATOR_VERSION) regenerates it."""

    num_train: int = 400
    num_val: int = 100
    min_size: int = 112
    max_size: int = 144
    seed: int = 0
    border: int = 2
    max_objects: int = 4

    def __post_init__(self) -> None:
        lower = {"num_train": 1, "num_val": 1, "min_size": 32, "max_size": self.min_size, "seed": 0}
        for name, low in {**lower, "border": 0, "max_objects": 1}.items():
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise UserError(f"synthetic spec {name}={value!r}: expected an integer >= {low}")


DEFAULT_SPEC = SyntheticSpec()


def _colour(rng: np.random.Generator) -> np.ndarray:
    """Draw one RGB colour from the distribution shared by objects, clutter and background."""
    return rng.uniform(0.0, 255.0, size=3).astype(np.float32)


def _colour_pair(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Draw two shared-distribution colours whose luminance differs enough for the texture to show."""
    first = _colour(rng)
    for _ in range(64):
        second = _colour(rng)
        if abs(float((first - second) @ _LUMA)) >= 80.0:
            break
    return first, second


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Paint a smooth random gradient plus small strokes and blobs (never object-sized), uint8 (H,W,3)."""
    theta = rng.uniform(0.0, 2 * np.pi)
    x, y = np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32)[:, None]
    proj = x * np.cos(theta) + y * np.sin(theta)
    t = ((proj - proj.min()) / max(float(np.ptp(proj)), 1.0)).astype(np.float32)[..., None]
    image = _colour(rng) * (1 - t) + _colour(rng) * t
    image += cv2.resize(
        rng.normal(0.0, 25.0, (4, 4, 3)).astype(np.float32), (w, h), interpolation=cv2.INTER_CUBIC
    )
    image = np.clip(image, 0, 255).astype(np.uint8)
    scale = 1 << _SUBPIXEL
    for _ in range(int(rng.integers(3, 10))):
        start = rng.uniform((0, 0), (w, h))
        steps = rng.normal(0.0, 0.12 * min(h, w), (int(rng.integers(1, 4)), 2))
        points = np.round(np.vstack([start, start + np.cumsum(steps, axis=0)]) * scale).astype(
            np.int32
        )
        colour = _colour(rng).tolist()
        cv2.polylines(
            image, [points], False, colour, int(rng.integers(1, 3)), cv2.LINE_AA, _SUBPIXEL
        )
    for _ in range(int(rng.integers(3, 9))):
        centre = tuple(int(c) for c in np.round(rng.uniform((0, 0), (w, h)) * scale))
        axes = tuple(int(a) for a in np.round(rng.uniform(1.0, 4.0, 2) * scale))
        colour, tilt = _colour(rng).tolist(), float(rng.uniform(0, 180))
        cv2.ellipse(image, centre, axes, tilt, 0, 360, colour, -1, cv2.LINE_AA, _SUBPIXEL)
    return image


def _polygon(points: np.ndarray, centre: np.ndarray, angle: float) -> np.ndarray:
    """Rotate object-frame (K,2) points by `angle`, move them to `centre`, in cv2 fixed point."""
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    return np.round((points @ rotation.T + centre) * (1 << _SUBPIXEL)).astype(np.int32)


def _shape_alpha(
    cls: int,
    rng: np.random.Generator,
    shape: tuple[int, int],
    centre: np.ndarray,
    radius: float,
    angle: float,
) -> np.ndarray:
    """Draw class `cls`'s shape anti-aliased as uint8 coverage (H,W): 255 inside, 0 outside."""
    alpha = np.zeros(shape, dtype=np.uint8)
    scale = 1 << _SUBPIXEL
    c = tuple(int(v) for v in np.round(centre * scale))
    degrees = float(np.degrees(angle))
    if cls in (1, 4):  # disc; ring = disc with a hole
        axes = (int(radius * scale), int(radius * rng.uniform(0.8, 1.0) * scale))
        cv2.ellipse(alpha, c, axes, degrees, 0, 360, 255, -1, cv2.LINE_AA, _SUBPIXEL)
        if cls == 4:
            hole = rng.uniform(0.4, 0.55)
            inner = (int(axes[0] * hole), int(axes[1] * hole))
            cv2.ellipse(alpha, c, inner, degrees, 0, 360, 0, -1, cv2.LINE_AA, _SUBPIXEL)
        return alpha
    if cls == 2:  # square (slightly rectangular at most)
        half = radius * np.array([0.8, 0.8 * rng.uniform(0.85, 1.0)])
        points = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]]) * half
    elif cls == 3:  # roughly equilateral triangle
        corners = np.radians([90.0, 210.0, 330.0]) + np.radians(rng.uniform(-10, 10, 3))
        points = 1.15 * radius * np.stack([np.cos(corners), np.sin(corners)], axis=1)
    else:  # cross: a plus sign with arms of equal length
        arm, half = radius, radius * rng.uniform(0.26, 0.36)
        quarter = np.array([[half, -half], [arm, -half], [arm, half], [half, half]])
        turns = [
            np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
            for a in np.arange(4) * np.pi / 2
        ]
        points = np.vstack([quarter @ turn.T for turn in turns])
    cv2.fillPoly(alpha, [_polygon(points, centre, angle)], 255, cv2.LINE_AA, _SUBPIXEL)
    return alpha


def _texture(
    cls: int, rng: np.random.Generator, u: np.ndarray, v: np.ndarray, period: float
) -> np.ndarray:
    """Return class `cls`'s two-tone texture (H,W) in {0,1}, laid out in the object's frame (u,v)."""
    if cls == 1:  # dots on a square lattice
        du, dv = np.mod(u, period) - period / 2, np.mod(v, period) - period / 2
        return (du**2 + dv**2 < (0.3 * period) ** 2).astype(np.float32)
    if cls == 2:  # checkerboard
        return np.mod(np.floor(u / period) + np.floor(v / period), 2).astype(np.float32)
    if cls == 3:  # parallel stripes
        return (np.mod(u, period) < period / 2).astype(np.float32)
    if cls == 4:  # concentric rings
        return (np.mod(np.hypot(u, v), period) < period / 2).astype(np.float32)
    # cross: irregular speckle, blobs of about period/2 pixels
    h, w = u.shape
    cells = max(2, int(round(2 * max(h, w) / period)))
    noise = cv2.resize(
        rng.random((cells, cells)).astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR
    )
    return (noise > 0.5).astype(np.float32)


def _void_band(instances: np.ndarray, border: int) -> np.ndarray:
    """Mark pixels within border/2 (rounded up) of a different instance: VOC's 255 contour band."""
    if border == 0:
        return np.zeros(instances.shape, dtype=bool)
    r = (border + 1) // 2
    dy, dx = np.mgrid[-r : r + 1, -r : r + 1]
    kernel = (dx**2 + dy**2 <= r * (r + 1)).astype(np.uint8)  # a disc that contains the 3x3 square
    return cv2.dilate(instances, kernel) != cv2.erode(instances, kernel)


def _paint_object(rng: np.random.Generator, image: np.ndarray, cls: int) -> np.ndarray:
    """Paint one object of class `cls` over `image` (float32, in place); return its coverage mask (H,W)."""
    h, w = image.shape[:2]
    radius = rng.uniform(_MIN_SIZE, _MAX_SIZE) * min(h, w) / 2
    centre = rng.uniform(0.1, 0.9, size=2) * (w, h)
    angle = float(rng.uniform(0.0, 2 * np.pi))
    # Work inside the object's bounding box (every shape fits in 1.15 * radius): ~5x faster.
    reach = 1.15 * radius + 2
    x0, y0 = (max(0, int(c - reach)) for c in centre)
    x1, y1 = min(w, int(centre[0] + reach) + 1), min(h, int(centre[1] + reach) + 1)
    local = centre - (x0, y0)
    alpha = _shape_alpha(cls, rng, (y1 - y0, x1 - x0), local, radius, angle)
    yy, xx = np.mgrid[0 : y1 - y0, 0 : x1 - x0].astype(np.float32)
    u = (xx - local[0]) * np.cos(angle) + (yy - local[1]) * np.sin(angle)
    v = (yy - local[1]) * np.cos(angle) - (xx - local[0]) * np.sin(angle)
    t = _texture(cls, rng, u, v, rng.uniform(*_PERIOD))[..., None]
    first, second = _colour_pair(rng)
    shade = 1.0 + rng.uniform(-0.2, 0.2) * np.clip(u / radius, -1, 1)[..., None]  # mild lighting
    a = (alpha.astype(np.float32) / 255.0)[..., None]
    window = image[y0:y1, x0:x1]
    window[:] = window * (1 - a) + (first * (1 - t) + second * t) * shade * a
    covered = np.zeros((h, w), dtype=bool)
    covered[y0:y1, x0:x1] = alpha >= 128
    return covered


def render_sample(spec: SyntheticSpec, split: str, index: int) -> tuple[np.ndarray, np.ndarray]:
    """Draw sample `index` of `split`: RGB image uint8 (H,W,3) and class mask uint8 (H,W) with 255 borders."""
    rng = np.random.default_rng([spec.seed, _SPLIT_CODES[split], index])
    h, w = (int(s) for s in rng.integers(spec.min_size, spec.max_size + 1, size=2))
    image = _background(rng, h, w).astype(np.float32)
    labels = np.zeros((h, w), dtype=np.uint8)
    instances = np.zeros((h, w), dtype=np.uint8)
    for k in range(int(rng.integers(1, spec.max_objects + 1))):
        cls = int(rng.integers(1, len(SYNTHETIC_CLASSES)))
        covered = _paint_object(rng, image, cls)  # later objects occlude earlier ones
        labels[covered] = cls
        instances[covered] = k + 1
    image += 3.0 * rng.standard_normal(image.shape, dtype=np.float32)
    labels[_void_band(instances, spec.border)] = IGNORE_INDEX
    return np.clip(np.rint(image), 0, 255).astype(np.uint8), labels


def _voc_dir(root: Path | str) -> Path:
    """Return `<root>/VOCdevkit/VOC2012`."""
    return Path(root).expanduser() / "VOCdevkit" / "VOC2012"


def _stamp(spec: SyntheticSpec) -> dict[str, Any]:
    """Return the stamp content that identifies a complete dataset generated from `spec`."""
    return {"version": GENERATOR_VERSION, "spec": asdict(spec)}


def _write_dataset(dest: Path, spec: SyntheticSpec) -> None:
    """Write every image, mask and split list of `spec` under `dest` (a VOC2012-like folder)."""
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (dest / sub).mkdir(parents=True, exist_ok=True)
    ids: dict[str, list[str]] = {}
    for split, count in (("train", spec.num_train), ("val", spec.num_val)):
        ids[split] = [f"{split}_{i:05d}" for i in range(count)]
        for i, sample_id in enumerate(ids[split]):
            image, mask = render_sample(spec, split, i)
            Image.fromarray(image).save(
                dest / "JPEGImages" / f"{sample_id}.jpg", format="JPEG", quality=90
            )
            save_palette_png(dest / "SegmentationClass" / f"{sample_id}.png", mask)
    ids["trainval"] = ids["train"] + ids["val"]
    for split, names in ids.items():
        (dest / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("\n".join(names) + "\n")


def _remove_generated(voc: Path) -> None:
    """Delete the files this generator writes in `voc`, and nothing else."""
    for sub, suffix in (("JPEGImages", ".jpg"), ("SegmentationClass", ".png")):
        for path in (voc / sub).glob(f"*{suffix}"):
            if _SAMPLE_ID.fullmatch(path.stem):
                path.unlink()
    for split in ("train", "val", "trainval"):
        (voc / "ImageSets" / "Segmentation" / f"{split}.txt").unlink(missing_ok=True)


def _move_files(src: Path, dest: Path) -> None:
    """Move every file under `src` to the same relative path under `dest`."""
    for path in sorted(p for p in src.rglob("*") if p.is_file()):
        target = dest / path.relative_to(src)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(path, target)


def synthetic_is_current(root: Path | str, spec: SyntheticSpec = DEFAULT_SPEC) -> bool:
    """Tell whether `<root>` holds a complete dataset stamped with this generator version and `spec`."""
    voc = _voc_dir(root)
    try:
        if json.loads((voc / STAMP_NAME).read_text()) != _stamp(spec):
            return False
    except (OSError, ValueError):
        return False
    lists = voc / "ImageSets" / "Segmentation"
    return all((lists / f"{split}.txt").is_file() for split in ("train", "val"))


def generate_synthetic_voc(root: Path | str, spec: SyntheticSpec = DEFAULT_SPEC) -> Path:
    """(Re)generate the dataset under `<root>/VOCdevkit/VOC2012` and return that folder.

    Files are drawn in a hidden staging folder beside it; the stamp is written last, so an
    interrupted run leaves either no VOC2012 or one whose stamp does not match (regenerated later).
    """
    voc = _voc_dir(root)
    if (voc / "JPEGImages").exists() and not (voc / STAMP_NAME).exists():
        raise UserError(
            f"{voc} already holds JPEGImages but no {STAMP_NAME}: it looks like a real dataset, so the "
            "synthetic generator will not write there; choose another root (data.root / --root)"
        )
    voc.parent.mkdir(parents=True, exist_ok=True)
    staging = voc.parent / f".seglab-synthetic-{uuid.uuid4().hex}"
    staging.mkdir()  # not tempfile.mkdtemp: its 0700 mode would stick to the renamed VOC2012
    try:
        _write_dataset(staging, spec)
        if not voc.exists():
            write_json_atomic(staging / STAMP_NAME, _stamp(spec))
            with contextlib.suppress(OSError):  # a parallel job's copy was renamed there first
                os.rename(staging, voc)
                return voc
        if synthetic_is_current(root, spec):
            # a parallel job (a sweep's other slot) finished the same dataset meanwhile: its files
            # may be open there, so they are kept, not swapped for these identical ones
            return voc
        # Keep the folder marked as ours but invalid while its files are swapped.
        write_json_atomic(voc / STAMP_NAME, {**_stamp(spec), "complete": False})
        _remove_generated(voc)
        _move_files(staging, voc)
        write_json_atomic(voc / STAMP_NAME, _stamp(spec))
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return voc


def ensure_synthetic_voc(root: Path | str, spec: SyntheticSpec = DEFAULT_SPEC) -> Path:
    """Return `<root>/VOCdevkit/VOC2012`, generating it first unless it is current for `spec`."""
    if synthetic_is_current(root, spec):
        return _voc_dir(root)
    return generate_synthetic_voc(root, spec)
