"""Tiny on-disk datasets in every supported layout and mask format, for tests and for trying configs.

Each image's colour encodes its class (`CLASS_COLOURS`), so a test can check after any geometric
transform that image and mask still agree. Ignored pixels (a band around objects, as VOC's 255
contours) are painted `IGNORE_COLOUR`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from src.data.palette import save_palette_png, voc_palette

# Distinct, saturated colours so bilinear blends between two classes never look like a third.
CLASS_COLOURS = np.array(
    [[0, 0, 0], [255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0], [255, 0, 255], [0, 255, 255]],
    dtype=np.uint8,
)
IGNORE_COLOUR = np.array([255, 255, 255], dtype=np.uint8)
MASK_FORMATS = ("palette", "gray", "rgb", "binary255")


def toy_pair(
    height: int, width: int, num_classes: int, seed: int, ignore_index: int = 255
) -> tuple[np.ndarray, np.ndarray]:
    """An (image, mask) pair: 1-3 rectangles of classes 1.. on background, each with a 1 px ignore band."""
    rng = np.random.default_rng(seed)
    mask = np.zeros((height, width), dtype=np.uint8)
    for _ in range(int(rng.integers(1, 4))):
        x0, y0 = int(rng.integers(0, width - 4)), int(rng.integers(0, height - 4))
        x1, y1 = int(rng.integers(x0 + 4, width + 1)), int(rng.integers(y0 + 4, height + 1))
        cls = int(rng.integers(1, num_classes))
        cv2.rectangle(mask, (x0, y0), (x1 - 1, y1 - 1), ignore_index, -1)
        mask[y0 + 1 : y1 - 1, x0 + 1 : x1 - 1] = cls
    image = CLASS_COLOURS[np.minimum(mask, len(CLASS_COLOURS) - 1)]
    image[mask == ignore_index] = IGNORE_COLOUR
    return image, mask


def save_image(path: Path, image: np.ndarray) -> None:
    """Save RGB uint8 losslessly when the suffix allows (PNG) so colours stay exact."""
    Image.fromarray(image).save(path)


def save_mask(
    path: Path, mask: np.ndarray, fmt: str = "palette", palette: np.ndarray | None = None
) -> None:
    """Write class indices as a palette PNG, a grayscale PNG, an RGB PNG in `palette`, or 0/255."""
    if fmt == "palette":
        save_palette_png(path, mask)
    elif fmt == "gray":
        Image.fromarray(mask).save(path)  # uint8 (H,W): mode "L"
    elif fmt == "rgb":
        colours = voc_palette() if palette is None else np.asarray(palette, dtype=np.uint8)
        Image.fromarray(colours[mask]).save(path)
    elif fmt == "binary255":
        Image.fromarray(np.where(mask > 0, 255, 0).astype(np.uint8)).save(path)
    else:
        raise ValueError(f"mask format {fmt!r}; expected one of {MASK_FORMATS}")


def write_voc(
    root: Path,
    splits: Mapping[str, Iterable[str]],
    year: str = "2012",
    size: tuple[int, int] = (40, 48),
    num_classes: int = 4,
    extra_masks: Iterable[str] = (),
) -> Path:
    """Write `<root>/VOCdevkit/VOC<year>` with JPEG images, palette masks and split lists; return it.

    `extra_masks`: ids that get an image but are listed in no split (as SBD's extra images).
    """
    voc = Path(root) / "VOCdevkit" / f"VOC{year}"
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (voc / sub).mkdir(parents=True, exist_ok=True)
    ids = list(dict.fromkeys([i for split in splits.values() for i in split] + list(extra_masks)))
    for n, sample_id in enumerate(ids):
        image, mask = toy_pair(*size, num_classes, seed=n)
        Image.fromarray(image).save(voc / "JPEGImages" / f"{sample_id}.jpg", quality=95)
        save_palette_png(voc / "SegmentationClass" / f"{sample_id}.png", mask)
    for split, split_ids in splits.items():
        (voc / "ImageSets" / "Segmentation" / f"{split}.txt").write_text(
            "".join(f"{i}\n" for i in split_ids)
        )
    return voc


def write_folder(
    root: Path,
    stems: Iterable[str],
    size: tuple[int, int] = (40, 48),
    num_classes: int = 2,
    mask_format: str = "palette",
    palette: np.ndarray | None = None,
    splits: Mapping[str, Iterable[str]] | None = None,
) -> dict[str, np.ndarray]:
    """Write `<root>/images/*.png` and `<root>/masks/*.png` (+ split files); return {stem: true mask}."""
    (Path(root) / "images").mkdir(parents=True, exist_ok=True)
    (Path(root) / "masks").mkdir(parents=True, exist_ok=True)
    truth = {}
    for n, stem in enumerate(stems):
        image, mask = toy_pair(*size, num_classes, seed=100 + n)
        if mask_format == "binary255":
            mask[mask == 255] = 0  # 0/255 data has no ignore label
        save_image(Path(root) / "images" / f"{stem}.png", image)
        save_mask(Path(root) / "masks" / f"{stem}.png", mask, mask_format, palette)
        truth[stem] = mask if mask_format != "binary255" else (mask > 0).astype(np.uint8)
    for split, split_stems in (splits or {}).items():
        (Path(root) / f"{split}.txt").write_text("".join(f"{s}\n" for s in split_stems))
    return truth
