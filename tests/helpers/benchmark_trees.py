"""Small Cityscapes- and ADE20K-layout trees, laid out as the downloads are, for tests.

Masks are blocks of label ids; each image's colour encodes its mask's label id, so a tiny model can
learn something in a smoke run. Only the pixel values and the file layout mimic the datasets.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

import cv2
import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
# Cityscapes label ids drawn in the masks: most of 0..33 (ignored and trained ones).
CITYSCAPES_IDS = tuple(range(34))
SIZE = (64, 128)  # (height, width): Cityscapes' 1:2 frames, small


def block_mask(
    ids: Sequence[int], rng: np.random.Generator, size: tuple[int, int] = SIZE, block: int = 8
) -> np.ndarray:
    """A (H, W) int mask of `block`-pixel squares, each one value drawn from `ids`."""
    height, width = size
    grid = rng.choice(np.asarray(ids), size=(-(-height // block), -(-width // block)))
    return np.kron(grid, np.ones((block, block), dtype=grid.dtype))[:height, :width]


def image_for(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """An RGB image whose colour is a function of the label id, plus a little noise."""
    colours = np.stack([(np.arange(256) * k) % 256 for k in (37, 91, 149)], axis=1)
    noise = rng.integers(0, 8, size=(*mask.shape, 3))
    return np.clip(colours[mask.astype(np.int64) % 256] + noise, 0, 255).astype(np.uint8)


def cityscapes_frames(split: str) -> list[tuple[str, str]]:
    """(city, frame stem) of the frames `write_cityscapes` writes for a split."""
    cities = {"train": ("aachen", "bochum"), "val": ("frankfurt", "lindau"), "test": ("berlin",)}[
        split
    ]
    count = {"train": 2, "val": 2, "test": 1}[split]
    return [
        (city, f"{city}_{seq:06d}_{19 + 7 * seq:06d}") for city in cities for seq in range(count)
    ]


def write_cityscapes(root: Path, seed: int = 0, splits: Sequence[str] = ("train", "val")) -> Path:
    """leftImg8bit/<split>/<city>/*_leftImg8bit.png and gtFine/... (labelIds and color PNGs) under root."""
    rng = np.random.default_rng(seed)
    for split in splits:
        for city, frame in cityscapes_frames(split):
            mask = block_mask(CITYSCAPES_IDS, rng).astype(np.uint8)
            image_dir = root / "leftImg8bit" / split / city
            label_dir = root / "gtFine" / split / city
            image_dir.mkdir(parents=True, exist_ok=True)
            label_dir.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image_for(mask, rng)).save(image_dir / f"{frame}_leftImg8bit.png")
            Image.fromarray(mask).save(label_dir / f"{frame}_gtFine_labelIds.png")  # mode "L"
            # as downloaded: colour pictures beside the ids; they must never be read as masks
            Image.fromarray(image_for(mask, rng)).save(label_dir / f"{frame}_gtFine_color.png")
    return root


ADE_SPLITS = {"training": 4, "validation": 2}


def ade20k_ids(split: str) -> list[str]:
    """The image ids `write_ade20k` writes for a split."""
    prefix = "ADE_train" if split == "training" else "ADE_val"
    return [f"{prefix}_{index:08d}" for index in range(1, ADE_SPLITS[split] + 1)]


def write_ade20k(parent: Path, seed: int = 0, gray_image: int = 1) -> Path:
    """parent/ADEChallengeData2016/{images,annotations}/{training,validation}; image `gray_image` of each split is a grayscale JPEG."""
    rng = np.random.default_rng(seed)
    base = parent / "ADEChallengeData2016"
    for split in ADE_SPLITS:
        (base / "images" / split).mkdir(parents=True, exist_ok=True)
        (base / "annotations" / split).mkdir(parents=True, exist_ok=True)
        for index, stem in enumerate(ade20k_ids(split)):
            # 0 ("other") and a spread of 1..150, including both ends
            mask = block_mask((0, 1, 2, 7, 49, 75, 149, 150), rng, size=(48, 64)).astype(np.uint8)
            image = image_for(mask, rng)
            if index == gray_image:
                image = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)  # saved as a 1-channel JPEG
            else:
                image = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
            cv2.imwrite(
                str(base / "images" / split / f"{stem}.jpg"), image, [cv2.IMWRITE_JPEG_QUALITY, 95]
            )
            Image.fromarray(mask).save(base / "annotations" / split / f"{stem}.png")
    return base


def load_check_dataset() -> ModuleType:
    """scripts/check_dataset.py as a module, so a test calls its main() in-process."""
    spec = importlib.util.spec_from_file_location(
        "check_dataset", ROOT / "scripts" / "check_dataset.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
