"""A user's own data: `<root>/images/` and `<root>/masks/` matched by file stem.

Splits come from `<root>/<train_split>.txt` and `<root>/<val_split>.txt` (one stem per line) when
both exist, otherwise from a random split of the images seeded by `split_seed` (not the training
seed, so the validation set stays put across runs) with `val_fraction` of them for validation.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import Any

import numpy as np

from src.data.datamodule import SegDataModule
from src.data.dataset import SplitListing
from src.data.io import IMAGE_SUFFIXES
from src.utils.errors import UserError

log = logging.getLogger(__name__)

MASK_SUFFIXES = (".png", ".bmp", ".tif", ".tiff")
LAYOUT = "<root>/{images}/<stem>.jpg|png|..., <root>/{masks}/<stem>.png"


def index_by_stem(folder: Path, suffixes: tuple[str, ...]) -> dict[str, Path]:
    """{stem: path} of the files in `folder` with one of `suffixes`; two files with one stem are an error."""
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if not path.is_file() or path.suffix.lower() not in suffixes:
            continue
        if path.stem in found:
            raise UserError(
                f"{found[path.stem]} and {path} share the stem '{path.stem}'; stems must be unique"
            )
        found[path.stem] = path
    return found


def random_split(stems: list[str], val_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """Split sorted `stems` into (train, val) by a permutation drawn from `seed`; val gets round(n*f), >= 1."""
    if not 0.0 < val_fraction < 1.0:
        raise UserError(
            f"data.val_fraction={val_fraction}: expected a fraction strictly between 0 and 1"
        )
    if len(stems) < 2:
        raise UserError(f"a random train/val split needs at least 2 images, found {len(stems)}")
    order = np.random.default_rng(seed).permutation(len(stems))
    num_val = min(max(1, round(len(stems) * val_fraction)), len(stems) - 1)
    shuffled = [stems[i] for i in order]
    return sorted(shuffled[num_val:]), sorted(shuffled[:num_val])


class FolderDataModule(SegDataModule):
    """Images and masks matched by stem under `data.root`; split files or a seeded random split."""

    def __init__(
        self,
        root: str,
        images_dir: str = "images",
        masks_dir: str = "masks",
        val_fraction: float = 0.2,
        split_seed: int = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__(root=root, **kwargs)
        self.images_dir, self.masks_dir = self.root / images_dir, self.root / masks_dir
        self.val_fraction, self.split_seed = float(val_fraction), int(split_seed)

    def _folder(self, path: Path) -> Path:
        if not path.is_dir():
            layout = LAYOUT.format(images=self.images_dir.name, masks=self.masks_dir.name)
            raise UserError(f"data.root={self.root}: {path} is not a folder; expected {layout}")
        return path

    @functools.cached_property
    def images(self) -> dict[str, Path]:
        """{stem: image path} of every image under images_dir."""
        return index_by_stem(self._folder(self.images_dir), IMAGE_SUFFIXES)

    @functools.cached_property
    def masks(self) -> dict[str, Path]:
        """{stem: mask path} of every mask under masks_dir."""
        return index_by_stem(self._folder(self.masks_dir), MASK_SUFFIXES)

    @functools.cached_property
    def split_ids(self) -> dict[str, list[str]]:
        """{split name: stems}, from the split files or the seeded random split."""
        files = {s: self.root / f"{s}.txt" for s in (self.train_split, self.val_split)}
        present = [s for s, f in files.items() if f.is_file()]
        if len(present) == 2:
            # Read leniently: an empty list fails that split alone (list_split), so the dataset
            # check can still read the other one.
            return {
                s: [line.split()[0] for line in f.read_text().splitlines() if line.strip()]
                for s, f in files.items()
            }
        if present:
            absent = next(f for s, f in files.items() if s not in present)
            raise UserError(
                f"{files[present[0]]} exists but {absent} does not: give both split files or neither"
            )
        stems = sorted(self.images)
        if not stems:
            raise UserError(f"{self.images_dir} holds no image ({', '.join(IMAGE_SUFFIXES)})")
        train, val = random_split(stems, self.val_fraction, self.split_seed)
        log.info(
            "data: no split files in %s; random split (split_seed=%d): %d train, %d val",
            self.root,
            self.split_seed,
            len(train),
            len(val),
        )
        return {self.train_split: train, self.val_split: val}

    def list_split(self, split: str) -> SplitListing:
        """List a split's pairs; a listed stem without an image or a mask is noted as missing."""
        if split not in self.split_ids:
            raise UserError(f"unknown split '{split}'; this dataset has {sorted(self.split_ids)}")
        if not self.split_ids[split]:
            raise UserError(
                f"split file {self.root / f'{split}.txt'} lists no images (empty split)"
            )
        pairs, missing = [], []
        for stem in self.split_ids[split]:
            image, mask = self.images.get(stem), self.masks.get(stem)
            if image is None:
                missing.append(f"split '{split}': no image named '{stem}' in {self.images_dir}")
            elif mask is None:
                missing.append(f"split '{split}': no mask for image {image} in {self.masks_dir}")
            else:
                pairs.append((image, mask))
        return SplitListing(split, pairs, missing)
