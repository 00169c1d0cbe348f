"""Full label check of a dataset: every image and mask read once, every fault listed, class histograms.

Used by scripts/check_dataset.py. Training runs the cheap part (files exist, splits not empty) at
start-up and the per-sample checks as it reads (src/data/dataset.py); this reads everything upfront.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import DataLoader, Dataset

from src.data.dataset import out_of_range
from src.data.io import read_image
from src.data.masks import MaskDecoder, SampleError
from src.utils.errors import UserError


@dataclass
class SplitReport:
    """What one split holds: pair count, per-class pixel and image counts, ignored pixels, faults."""

    split: str
    num_pairs: int
    pixels: np.ndarray  # (C,) labelled pixels per class
    images: np.ndarray  # (C,) images in which each class occurs
    ignored: int = 0
    faults: list[str] = field(default_factory=list)


def inspect_pair(
    image_path: Path, mask_path: Path, decoder: MaskDecoder
) -> tuple[list[str], np.ndarray, int]:
    """Faults of one pair, its per-class pixel counts (C,), and its ignored pixel count."""
    faults: list[str] = []
    counts = np.zeros(decoder.num_classes, dtype=np.int64)
    image = mask = None
    try:
        image = read_image(image_path)
    except SampleError as err:
        faults.append(str(err))
    try:
        mask = decoder(mask_path)
    except SampleError as err:
        faults.append(str(err))
    if mask is None:
        return faults, counts, 0
    if image is not None and image.shape[:2] != mask.shape:
        faults.append(
            f"size mismatch: image {image_path} is {image.shape[1]}x{image.shape[0]} (WxH) "
            f"but mask {mask_path} is {mask.shape[1]}x{mask.shape[0]}"
        )
    for value, pixels in out_of_range(mask, decoder.num_classes, decoder.ignore_index).items():
        faults.append(
            f"mask {mask_path} holds value {value} in {pixels} px, outside [0, {decoder.num_classes}) "
            f"and not ignore_index={decoder.ignore_index}"
        )
    histogram = np.bincount(mask.ravel(), minlength=256)
    return (
        faults,
        histogram[: decoder.num_classes].astype(np.int64),
        int(histogram[decoder.ignore_index]),
    )


def _identity(item: Any) -> Any:
    return item


class _PairInspection(Dataset):
    """inspect_pair over a list of pairs, so a DataLoader can spread the reading over workers."""

    def __init__(self, pairs: list[tuple[Path, Path]], decoder: MaskDecoder) -> None:
        self.pairs, self.decoder = pairs, decoder

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> tuple[list[str], np.ndarray, int]:
        return inspect_pair(*self.pairs[index], self.decoder)


def check_split(datamodule: Any, split: str, num_workers: int = 0) -> SplitReport:
    """Read every pair a split lists (datamodule.list_split) and report faults and class counts."""
    num_classes = datamodule.num_classes
    report = SplitReport(split, 0, np.zeros(num_classes, np.int64), np.zeros(num_classes, np.int64))
    try:
        listing = datamodule.list_split(split)
    except UserError as err:
        report.faults.append(str(err))
        return report
    report.faults.extend(listing.missing)
    report.num_pairs = len(listing.pairs)
    if not listing.pairs:
        report.faults.append(f"split '{split}' has no usable (image, mask) pair (empty split)")
        return report
    loader = DataLoader(
        _PairInspection(listing.pairs, datamodule.decoder),
        batch_size=None,
        num_workers=num_workers,
        collate_fn=_identity,
    )
    for faults, counts, ignored in loader:
        report.faults.extend(faults)
        report.pixels += counts
        report.images += counts > 0
        report.ignored += ignored
    return report
