"""LightningDataModules: VOC-layout datasets (real or the embedded synthetic one) to padded batches."""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader

from src.data.transforms import normalize, pad_collate
from src.data.voc import SegmentationDataset, Transform, find_voc_dir, voc_pairs
from src.utils.errors import UserError

Pairs = list[tuple[Path, Path]]


class SegDataModule(L.LightningDataModule):
    """Base: subclasses say where the (image, mask) pairs of each split are."""

    def __init__(
        self,
        root: str,
        num_classes: int,
        ignore_index: int = 255,
        class_names: Sequence[str] | None = None,
        batch_size: int = 16,
        num_workers: int = 2,
        pin_memory: bool = True,
        augment: Transform | None = None,
        train_split: str = "train",
        val_split: str = "val",
    ) -> None:
        super().__init__()
        self.root = Path(root).expanduser()
        self.num_classes = int(num_classes)
        self.ignore_index = int(ignore_index)
        self.class_names = list(class_names) if class_names else [f"class_{i}" for i in range(num_classes)]
        self.batch_size = int(batch_size)
        self.num_workers = int(num_workers)
        self.pin_memory = bool(pin_memory)
        self.augment = augment
        self.train_split, self.val_split = train_split, val_split
        self._datasets: dict[str, SegmentationDataset] = {}
        self._check_config()

    def _check_config(self) -> None:
        if len(self.class_names) != self.num_classes:
            raise UserError(
                f"data.class_names has {len(self.class_names)} names but data.num_classes={self.num_classes}"
            )
        if not 0 <= self.ignore_index <= 255 or self.ignore_index < self.num_classes:
            raise UserError(
                f"data.ignore_index={self.ignore_index} must lie in [num_classes, 255] (masks are 8-bit PNGs)"
            )

    def split_pairs(self, split: str) -> Pairs:
        """Return the (image, mask) paths of a split."""
        raise NotImplementedError

    def check_layout(self) -> None:
        """Cheap start-up checks (the files of both splits exist, no split is empty), before any model."""
        for split in (self.train_split, self.val_split):
            self.split_pairs(split)

    def train_mask_paths(self) -> list[Path]:
        """Masks of the training split (for class-weight statistics)."""
        return [mask for _, mask in self.split_pairs(self.train_split)]

    def setup(self, stage: str | None = None) -> None:
        """Build the datasets once."""
        if not self._datasets:
            self._datasets = {
                "train": self._dataset(self.train_split, self.augment),
                "val": self._dataset(self.val_split, None),
            }

    def _dataset(self, split: str, transform: Transform | None) -> SegmentationDataset:
        return SegmentationDataset(self.split_pairs(split), self.num_classes, self.ignore_index, transform)

    def per_device_batch_size(self) -> int:
        """The configured batch size is global: split it across the processes of a DDP run."""
        world = self.trainer.world_size if self.trainer is not None else 1
        if self.batch_size % world:
            raise UserError(f"data.batch_size={self.batch_size} is not divisible by the {world} processes of this run")
        return self.batch_size // world

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        return DataLoader(
            self._datasets[split],
            batch_size=self.per_device_batch_size(),
            shuffle=shuffle,
            drop_last=shuffle,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory and torch.cuda.is_available(),
            persistent_workers=self.num_workers > 0,
            collate_fn=functools.partial(pad_collate, ignore_index=self.ignore_index),
        )

    def train_dataloader(self) -> DataLoader:
        """Shuffled, augmented training batches."""
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        """Validation batches at original resolution (padded with ignore_index)."""
        return self._loader("val", shuffle=False)

    def on_after_batch_transfer(self, batch: dict[str, Any], dataloader_idx: int) -> dict[str, Any]:
        """Normalise on the device: uint8 crosses the bus (4x less than float), int64 masks for the loss."""
        batch["image"] = normalize(batch["image"])
        batch["mask"] = batch["mask"].long()
        return batch


class VOCDataModule(SegDataModule):
    """Pascal VOC (2007 or 2012) from `data.root`, splits from ImageSets/Segmentation."""

    def __init__(self, root: str, year: str = "2012", **kwargs: Any) -> None:
        super().__init__(root=root, **kwargs)
        self.year = str(year)

    @functools.cache  # noqa: B019 - one datamodule per run; the split lists do not change during it
    def split_pairs(self, split: str) -> Pairs:
        """Return the (image, mask) paths of a VOC split."""
        return voc_pairs(find_voc_dir(self.root, self.year), split)


class SyntheticVOCDataModule(VOCDataModule):
    """The embedded dataset: generated in VOC layout on first use (see src/data/synthetic.py)."""

    def __init__(self, root: str, spec: Mapping[str, Any] | None = None, **kwargs: Any) -> None:
        super().__init__(root=root, year="2012", **kwargs)
        self.spec = dict(spec or {})

    def prepare_data(self) -> None:
        """Generate the dataset unless an identical one (same generator version and spec) is there."""
        from src.data.synthetic import SyntheticSpec, ensure_synthetic_voc

        ensure_synthetic_voc(self.root, SyntheticSpec(**self.spec))
