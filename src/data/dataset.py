"""Decoding and checking (image, mask) pairs, and the Dataset every data source shares."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from src.data.io import read_image
from src.data.masks import MaskDecoder, SampleError
from src.data.transforms import label_counts
from src.utils.errors import UserError

log = logging.getLogger(__name__)

Sample = dict[str, torch.Tensor | str | int]
Transform = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]
Pairs = list[tuple[Path, Path]]


@dataclass
class SplitListing:
    """The pairs a split lists whose files exist, and one line per listed file that does not."""

    split: str
    pairs: Pairs
    missing: list[str] = field(default_factory=list)


def split_folder(splits_dir: Path, split: str, dataset: str) -> Path:
    """`splits_dir/<split>`, or UserError naming the splits this copy of `dataset` has (one folder each)."""
    folder = splits_dir / split
    if not folder.is_dir():
        found = sorted(p.name for p in splits_dir.iterdir() if p.is_dir())
        raise UserError(
            f"split '{split}': {folder} is not a folder; this {dataset} copy has the splits "
            f"{', '.join(found) or '(none)'}"
        )
    return folder


def out_of_range(mask: np.ndarray, num_classes: int, ignore_index: int) -> dict[int, int]:
    """{value: pixel count} for labels outside [0, num_classes) other than ignore_index."""
    counts = label_counts(mask)
    counts[:num_classes] = 0
    if 0 <= ignore_index < 256:
        counts[ignore_index] = 0
    return {int(v): int(counts[v]) for v in np.flatnonzero(counts)}


def check_mask_values(mask: np.ndarray, num_classes: int, ignore_index: int, path: Path) -> None:
    """Raise naming the file and values when a mask holds labels outside [0, num_classes) and ignore_index."""
    bad = out_of_range(mask, num_classes, ignore_index)
    if bad:
        listed = ", ".join(f"{v} ({n} px)" for v, n in list(bad.items())[:10])
        raise SampleError(
            f"mask {path} holds labels outside [0, {num_classes}) other than ignore_index={ignore_index}: "
            f"{listed}"
        )


def load_pair(
    image_path: Path, mask_path: Path, decoder: MaskDecoder
) -> tuple[np.ndarray, np.ndarray]:
    """Decode and check one pair: both decodable, same size, mask values in range (else SampleError)."""
    image, mask = read_image(image_path), decoder(mask_path)
    if image.shape[:2] != mask.shape:
        raise SampleError(
            f"image {image_path} is {image.shape[1]}x{image.shape[0]} (WxH) but its mask {mask_path} is "
            f"{mask.shape[1]}x{mask.shape[0]}"
        )
    check_mask_values(mask, decoder.num_classes, decoder.ignore_index, mask_path)
    return image, mask


class SegmentationDataset(Dataset):
    """(image, mask) file pairs -> {'image': uint8 (3,H,W), 'mask': uint8 (H,W), 'name': stem}.

    A bad pair raises SampleError naming the file and problem; with `skip_bad` it is logged once
    and replaced by the next good pair, and the sample's 'skipped' counts the pairs passed over.
    """

    def __init__(
        self,
        pairs: Sequence[tuple[Path, Path]],
        num_classes: int,
        ignore_index: int = 255,
        transform: Transform | None = None,
        decoder: MaskDecoder | None = None,
        skip_bad: bool = False,
    ) -> None:
        self.pairs = list(pairs)
        self.decoder = decoder or MaskDecoder(num_classes, ignore_index)
        self.num_classes, self.ignore_index = self.decoder.num_classes, self.decoder.ignore_index
        self.transform = transform
        self.skip_bad = bool(skip_bad)
        self._reported: set[int] = set()

    def __len__(self) -> int:
        return len(self.pairs)

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Decode and check pair `index`, before any transform."""
        return load_pair(*self.pairs[index], self.decoder)

    def __getitem__(self, index: int) -> Sample:
        for skipped in range(len(self.pairs)):
            candidate = (index + skipped) % len(self.pairs)
            try:
                image, mask = self.load(candidate)
            except SampleError as err:
                if not self.skip_bad:
                    raise
                if candidate not in self._reported:  # once per worker, not once per epoch
                    self._reported.add(candidate)
                    log.warning("data.skip_bad: skipping %s", err)
                continue
            return self._sample(image, mask, self.pairs[candidate][0].stem, skipped)
        raise UserError(
            f"data.skip_bad=true but none of the {len(self.pairs)} samples of this split is usable"
        )

    def _sample(self, image: np.ndarray, mask: np.ndarray, name: str, skipped: int) -> Sample:
        if self.transform is not None:
            image, mask = self.transform(image, mask)
        return {
            "image": torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))),
            "mask": torch.from_numpy(np.ascontiguousarray(mask)),
            "name": name,
            "skipped": skipped,
        }
