"""Pascal VOC layout: locating the dataset, reading split lists, decoding image/mask pairs."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from src.utils.errors import UserError

VOC_LAYOUT = "VOCdevkit/VOC{year}/{{JPEGImages, SegmentationClass, ImageSets/Segmentation/<split>.txt}}"

Sample = dict[str, torch.Tensor | str]
Transform = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]


def find_voc_dir(root: str | Path, year: str = "2012") -> Path:
    """Return the `VOC<year>` folder given it, the `VOCdevkit` folder holding it, or their parent."""
    root = Path(root).expanduser()
    for candidate in (root, root / f"VOC{year}", root / "VOCdevkit" / f"VOC{year}"):
        if (candidate / "JPEGImages").is_dir() and (candidate / "SegmentationClass").is_dir():
            return candidate
    expected = VOC_LAYOUT.format(year=year)
    if not root.exists():
        raise UserError(f"data.root={root} does not exist; expected a Pascal VOC folder laid out as {expected}")
    raise UserError(
        f"data.root={root} does not hold a Pascal VOC {year} dataset; expected {expected} "
        f"(data.root may name VOCdevkit, VOC{year} inside it, or their parent)"
    )


def read_split(voc_dir: Path, split: str) -> list[str]:
    """Read the image ids listed in `ImageSets/Segmentation/<split>.txt`; an empty split is an error."""
    split_file = voc_dir / "ImageSets" / "Segmentation" / f"{split}.txt"
    if not split_file.is_file():
        raise UserError(f"split file {split_file} is missing; expected one image id per line")
    ids = [line.split()[0] for line in split_file.read_text().splitlines() if line.strip()]
    if not ids:
        raise UserError(f"split file {split_file} lists no images")
    return ids


def voc_pairs(voc_dir: Path, split: str, mask_dir: str = "SegmentationClass") -> list[tuple[Path, Path]]:
    """Return (image, mask) paths for a split, checking that every file exists."""
    pairs = [(voc_dir / "JPEGImages" / f"{i}.jpg", voc_dir / mask_dir / f"{i}.png") for i in read_split(voc_dir, split)]
    missing = [str(p) for pair in pairs for p in pair if not p.is_file()]
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise UserError(f"split '{split}' of {voc_dir} lists files that do not exist: {shown}")
    return pairs


def read_image(path: Path) -> np.ndarray:
    """Decode an image file to RGB uint8 (H,W,3)."""
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise UserError(f"cannot decode image {path}")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def read_mask(path: Path) -> np.ndarray:
    """Decode a palette or grayscale PNG to its class indices (H,W) uint8."""
    with Image.open(path) as img:
        if img.mode not in ("P", "L"):
            raise UserError(f"mask {path} has mode {img.mode}; expected a palette ('P') or grayscale ('L') PNG of class indices")
        return np.array(img, dtype=np.uint8)  # a writable copy: torch.from_numpy needs one


def check_mask_values(mask: np.ndarray, num_classes: int, ignore_index: int, path: Path) -> None:
    """Raise naming the file and values when a mask holds labels outside [0, num_classes) and ignore_index."""
    counts = np.bincount(mask.ravel(), minlength=256)
    counts[:num_classes] = 0
    if 0 <= ignore_index < 256:
        counts[ignore_index] = 0
    bad = np.flatnonzero(counts)
    if bad.size:
        listed = ", ".join(f"{v} ({counts[v]} px)" for v in bad[:10])
        raise UserError(
            f"mask {path} holds labels outside [0, {num_classes}) other than ignore_index={ignore_index}: {listed}"
        )


class SegmentationDataset(Dataset):
    """(image, mask) file pairs -> {'image': uint8 (3,H,W), 'mask': uint8 (H,W), 'name': stem}."""

    def __init__(
        self,
        pairs: Sequence[tuple[Path, Path]],
        num_classes: int,
        ignore_index: int = 255,
        transform: Transform | None = None,
    ) -> None:
        self.pairs = list(pairs)
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.transform = transform

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> Sample:
        image_path, mask_path = self.pairs[index]
        image, mask = read_image(image_path), read_mask(mask_path)
        if image.shape[:2] != mask.shape:
            raise UserError(f"image {image_path} is {image.shape[:2]} but mask {mask_path} is {mask.shape}")
        check_mask_values(mask, self.num_classes, self.ignore_index, mask_path)
        if self.transform is not None:
            image, mask = self.transform(image, mask)
        return {
            "image": torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))),
            "mask": torch.from_numpy(np.ascontiguousarray(mask)),
            "name": image_path.stem,
        }
