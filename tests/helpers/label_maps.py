"""Small random (prediction, label) pairs that exercise metric edge cases.

Each scene has objects touching the image border, ignored blobs, a class absent from both maps
(`ABSENT`), odd sizes; some scenes are one class wall to wall (a full class, no contour at all).
"""

from __future__ import annotations

import numpy as np

NUM_CLASSES, ABSENT, IGNORE = 5, 4, 255
# odd sizes, a 1-pixel-tall strip, a square
SIZES = ((17, 23), (9, 31), (1, 12), (21, 21), (13, 8))


def paint_objects(label: np.ndarray, rng: np.random.Generator, classes: int) -> None:
    """Rectangles and discs of random classes, some running off the image border."""
    height, width = label.shape
    yy, xx = np.mgrid[:height, :width]
    for _ in range(int(rng.integers(1, 5))):
        cls = int(rng.integers(1, classes))
        if rng.random() < 0.5:
            y0, x0 = int(rng.integers(-3, height)), int(rng.integers(-3, width))
            y1, x1 = y0 + int(rng.integers(1, 9)), x0 + int(rng.integers(1, 11))
            label[max(0, y0) : max(0, y1), max(0, x0) : max(0, x1)] = cls
        else:
            cy, cx, r = rng.integers(0, height), rng.integers(0, width), rng.integers(1, 6)
            label[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = cls


def scene(seed: int, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(prediction, label) int64 (H, W): the label with ignored blobs, the prediction a perturbed label."""
    rng = np.random.default_rng(seed)
    label = np.zeros(size, dtype=np.int64)
    if seed % 5 == 4:  # one class wall to wall in the label; the prediction mostly agrees
        label[:] = int(rng.integers(0, ABSENT))
    else:
        paint_objects(label, rng, ABSENT)
    pred = np.roll(label, shift=(int(rng.integers(-1, 2)), int(rng.integers(-2, 3))), axis=(0, 1))
    if seed % 5 != 4:
        paint_objects(pred, rng, ABSENT)
    noise = rng.random(size) < 0.05
    pred[noise] = rng.integers(0, ABSENT, int(noise.sum()))
    ignored = rng.random(size) < 0.08
    if seed % 3 == 0:  # an ignored rectangle too, as VOC's void regions
        y0, x0 = int(rng.integers(0, size[0])), int(rng.integers(0, size[1]))
        ignored[y0 : y0 + 4, x0 : x0 + 5] = True
    label[ignored] = IGNORE
    return pred, label


def scenes(count: int, offset: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """`count` scenes over every size in SIZES."""
    return [scene(offset + i, SIZES[i % len(SIZES)]) for i in range(count)]
