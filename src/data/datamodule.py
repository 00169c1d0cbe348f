"""LightningDataModules: VOC (with SBD), the embedded synthetic set, and (folder.py) a user's folder.

Every source lists (image, mask) pairs per split; decoding, checking, augmentation, batching, DDP
sampling and the on-device normalise are shared here.
"""

from __future__ import annotations

import functools
import logging
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import cv2
import lightning as L
import torch
from lightning.fabric.utilities.seed import pl_worker_init_function
from torch.utils.data import DataLoader, DistributedSampler, Sampler

from src.data.dataset import Pairs, SegmentationDataset, SplitListing, Transform
from src.data.masks import MaskDecoder
from src.data.samplers import UnpaddedDistributedSampler
from src.data.sbd import AUG_SPLIT, SBD_SPLITS, find_sbd_dir, sbd_listing, train_aug_listing
from src.data.transforms import check_normalization, normalize, pad_collate
from src.data.voc import find_voc_dir, read_split, summarise, voc_listing
from src.utils.errors import UserError

log = logging.getLogger(__name__)


def init_worker(worker_id: int, rank: int = 0) -> None:
    """DataLoader worker set-up: Lightning's per-rank seeding when seed_everything(workers=True) is on."""
    # Setting worker_init_fn stops Lightning adding its own; call it as Lightning would have, so
    # ranks draw different augmentations. (No cv2 call here: cv2.setNumThreads in a forked child
    # can deadlock on the parent's thread pool; `_loader` configures OpenCV before the fork.)
    if int(os.environ.get("PL_SEED_WORKERS", 0)):
        pl_worker_init_function(worker_id, rank)


class SegDataModule(L.LightningDataModule):
    """Base: subclasses say which (image, mask) files each split lists (`list_split`)."""

    def __init__(
        self,
        root: str,
        num_classes: int,
        pad_multiple: int,
        ignore_index: int = 255,
        class_names: Sequence[str] | None = None,
        batch_size: int = 16,
        num_workers: int = 2,
        pin_memory: bool = True,
        persistent_workers: bool = True,
        augment: Transform | None = None,
        train_split: str = "train",
        val_split: str = "val",
        palette: Sequence[Sequence[int]] | None = None,
        ignore_color: Sequence[int] | None = None,
        binary_255: bool = False,
        skip_bad: bool = False,
        normalize: str = "imagenet",
        label_map: str | None = None,
        inference: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.root = Path(root).expanduser()
        self.num_classes = int(num_classes)
        self.ignore_index = int(ignore_index)
        self.class_names = (
            list(class_names) if class_names else [f"class_{i}" for i in range(num_classes)]
        )
        self.batch_size = int(batch_size)
        self.num_workers = int(num_workers)
        self.pin_memory = bool(pin_memory)
        self.persistent_workers = bool(persistent_workers)
        self.augment = augment
        self.train_split, self.val_split = str(train_split), str(val_split)
        self.skip_bad = bool(skip_bad)
        self.pad_multiple = int(pad_multiple)
        self.normalize = check_normalization(normalize)
        self._check_config()
        # the dataset's label ids -> class indices (src/data/label_maps.py); None: masks hold indices
        self.decoder = MaskDecoder(
            self.num_classes, self.ignore_index, palette, ignore_color, binary_255, label_map
        )
        # `inference` (the test-time defaults this dataset suggests) is read at the config level, by
        # conf/inference/default.yaml; it is a parameter only so that the data config instantiates
        del inference
        self.skipped_samples = (
            0  # bad samples passed over (data.skip_bad), counted in the main process
        )
        self._pairs: dict[str, Pairs] = {}
        self._datasets: dict[str, SegmentationDataset] = {}

    def _check_config(self) -> None:
        if len(self.class_names) != self.num_classes:
            raise UserError(
                f"data.class_names has {len(self.class_names)} names but data.num_classes={self.num_classes}"
            )
        if not 0 <= self.ignore_index <= 255 or self.ignore_index < self.num_classes:
            raise UserError(
                f"data.ignore_index={self.ignore_index} must lie in [num_classes, 255] (masks are 8-bit PNGs)"
            )
        if self.batch_size < 1:
            raise UserError(f"data.batch_size={self.batch_size}: expected a positive integer")
        if self.pad_multiple < 1:
            raise UserError(f"data.pad_multiple={self.pad_multiple}: expected a positive integer")

    def list_split(self, split: str) -> SplitListing:
        """List the pairs of a split, noting listed files that are missing (raises if the list itself is)."""
        raise NotImplementedError

    def split_pairs(self, split: str) -> Pairs:
        """The (image, mask) paths of a split; missing files are an error (skipped with data.skip_bad)."""
        if split not in self._pairs:
            listing = self.list_split(split)
            if listing.missing and not self.skip_bad:
                raise UserError(
                    summarise(
                        listing.missing,
                        f"split '{split}' under {self.root} lists files that do not exist",
                    )
                )
            if listing.missing:
                log.warning(
                    "data.skip_bad: %s",
                    summarise(
                        listing.missing, f"{len(listing.missing)} pairs of split '{split}' skipped"
                    ),
                )
            if not listing.pairs:
                raise UserError(
                    f"split '{split}' under {self.root} has no usable (image, mask) pair (empty split)"
                )
            self._pairs[split] = listing.pairs
        return self._pairs[split]

    def check_layout(self) -> None:
        """Cheap start-up checks (the files of both splits exist, no split is empty), before any model."""
        for split in (self.train_split, self.val_split):
            self.split_pairs(split)

    def train_mask_paths(self) -> list[Path]:
        """Masks of the training split (for class-weight statistics)."""
        return [mask for _, mask in self.split_pairs(self.train_split)]

    def dataset(self, split: str, transform: Transform | None = None) -> SegmentationDataset:
        """A dataset over `split` that decodes and checks with this module's mask format."""
        return SegmentationDataset(
            self.split_pairs(split),
            self.num_classes,
            self.ignore_index,
            transform,
            self.decoder,
            self.skip_bad,
        )

    def setup(self, stage: str | None = None) -> None:
        """Build the datasets once."""
        if not self._datasets:
            self._datasets = {
                "train": self.dataset(self.train_split, self.augment),
                "val": self.dataset(self.val_split),
            }

    def per_device_batch_size(self, world_size: int | None = None) -> int:
        """The configured batch size is global: split it across the processes of a DDP run."""
        if world_size is None:
            world_size = self.trainer.world_size if self.trainer is not None else 1
        if self.batch_size % world_size:
            raise UserError(
                f"data.batch_size={self.batch_size} is not divisible by the {world_size} processes of this run"
            )
        return self.batch_size // world_size

    def _sampler(self, split: str) -> Sampler | None:
        """DDP: shuffled, seeded shards for training, unpadded shards for validation; else None."""
        if self.trainer is None or self.trainer.world_size <= 1:
            return None
        world, rank = self.trainer.world_size, self.trainer.global_rank
        if split == "val":
            return UnpaddedDistributedSampler(self._datasets[split], world, rank)
        # Lightning's own choice of seed (seed_everything exports it); it calls set_epoch each epoch.
        seed = int(os.environ.get("PL_GLOBAL_SEED", 0))
        return DistributedSampler(self._datasets[split], world, rank, shuffle=True, seed=seed)

    def train_images_per_device(self, world_size: int) -> int:
        """Training images each process draws per epoch (DistributedSampler pads the split to a multiple)."""
        return math.ceil(len(self.split_pairs(self.train_split)) / world_size)

    def train_batches_per_device(self, world_size: int) -> int:
        """Training batches per process and epoch: the full ones, or one smaller batch when no batch is full.

        An incomplete last batch is dropped (every step sees data.batch_size images, and no step
        sees a single image, which DeepLabV3's pooled BatchNorm refuses in training). A split
        smaller than one batch (a few images tried with `debug=smoke`) would then train nothing,
        so it trains as one batch of all its images instead.
        """
        images = self.train_images_per_device(world_size)
        return max(images // self.per_device_batch_size(world_size), min(images, 1))

    def check_train_batches(self, trainer: L.Trainer) -> None:
        """Before fit: raise naming the split, its size, data.batch_size and the devices if an epoch has no batch."""
        world, limit = trainer.world_size, trainer.limit_train_batches
        batches = self.train_batches_per_device(world)
        # as Lightning reads limit_train_batches: an int counts batches, a float is a fraction
        kept = min(batches, limit) if isinstance(limit, int) else int(batches * limit)
        if kept > 0:
            if trainer.is_global_zero:
                self._warn_if_smaller_than_a_batch(world)
            return
        found = (
            f"split '{self.train_split}' under {self.root} has {len(self.split_pairs(self.train_split))} "
            f"images, {self.train_images_per_device(world)} per process on {world} process(es) "
            f"(trainer.devices={trainer.num_devices}, trainer.num_nodes={trainer.num_nodes}); "
            f"data.batch_size={self.batch_size} gives {batches} training batch(es) per epoch and "
            f"trainer.limit_train_batches={limit} keeps {kept}"
        )
        if isinstance(limit, float) and limit > 0:
            fix = f"raise trainer.limit_train_batches to at least {1 / batches:.4g}, or give a number of batches"
        else:
            fix = "set trainer.limit_train_batches to a positive number of batches (or 1.0 for all of them)"
        raise UserError(f"no training batch: {found}; {fix}")

    def _warn_if_smaller_than_a_batch(self, world_size: int) -> None:
        """Say so when an epoch trains one batch smaller than data.batch_size (train_batches_per_device)."""
        images, batch = self.train_images_per_device(world_size), self.per_device_batch_size(world_size)
        if images < batch:
            log.warning(
                "split '%s' has %d images per process, fewer than data.batch_size=%d (%d per process): "
                "each epoch trains one batch of %d",
                self.train_split, images, self.batch_size, batch, images,
            )  # fmt: skip

    def _loader(self, split: str) -> DataLoader:
        train = split == "train"
        if self.num_workers > 0:
            # Workers fork from this process and inherit this: one OpenCV thread each, so N workers
            # do not oversubscribe the cores (as mmengine does). OpenCV in this process is then
            # single-threaded too, which costs nothing here: the workers do the decoding.
            cv2.setNumThreads(1)
        sampler = self._sampler(split)
        batch_size = self.per_device_batch_size()
        images = len(sampler) if sampler is not None else len(self._datasets[split])
        return DataLoader(
            self._datasets[split],
            batch_size=batch_size,
            shuffle=train and sampler is None,
            sampler=sampler,
            drop_last=train and images >= batch_size,  # see train_batches_per_device
            num_workers=self.num_workers,
            pin_memory=self.pin_memory and torch.cuda.is_available(),
            persistent_workers=self.persistent_workers and self.num_workers > 0,
            worker_init_fn=functools.partial(
                init_worker, rank=self.trainer.global_rank if self.trainer else 0
            ),
            # Pads (ignore_index) to a multiple of 32, where every stride of the FCN family divides.
            collate_fn=functools.partial(
                pad_collate, ignore_index=self.ignore_index, multiple=self.pad_multiple
            ),
        )

    def train_dataloader(self) -> DataLoader:
        """Shuffled, augmented training batches."""
        return self._loader("train")

    def val_dataloader(self) -> DataLoader:
        """Validation batches at original resolution (padded with ignore_index), each sample once."""
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        """What `trainer.test` scores (src/eval.py): the validation split, batched as validation is."""
        return self._loader("val")

    def on_after_batch_transfer(self, batch: dict[str, Any], dataloader_idx: int) -> dict[str, Any]:
        """Normalise on the device: uint8 crosses the bus (4x less than float), int64 masks for the loss."""
        skipped = batch.pop("skipped", 0)
        if skipped:
            self.skipped_samples += int(skipped)
            log.warning(
                "data.skip_bad: %d bad samples replaced in this batch (%d so far)",
                skipped,
                self.skipped_samples,
            )
        batch["image"] = normalize(batch["image"], self.normalize)
        batch["mask"] = batch["mask"].long()
        return batch


class VOCDataModule(SegDataModule):
    """Pascal VOC (2007 or 2012) from `data.root`, splits from ImageSets/Segmentation.

    `use_sbd=true` trains on "train_aug" (VOC train + SBD's SegmentationClassAug, no VOC val image).
    The splits `sbd_train`/`sbd_val` read SBD as released from `sbd_root` (src/data/sbd.py), and
    `seg11valid` is the FCN reference's validation set, read from VOC (src/data/voc.py); training
    on SBD leaves out every image of the validation split.
    """

    def __init__(
        self,
        root: str,
        year: str = "2012",
        use_sbd: bool = False,
        sbd_dir: str = "SegmentationClassAug",
        sbd_list: str | None = None,
        sbd_root: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(root=root, **kwargs)
        self.year = str(year)
        self.use_sbd, self.sbd_dir, self.sbd_list = bool(use_sbd), sbd_dir, sbd_list
        self.sbd_root = sbd_root
        self._base_train_split = self.train_split
        if self.use_sbd:
            self.train_split = AUG_SPLIT

    def list_split(self, split: str) -> SplitListing:
        """List a VOC or SBD split; 'train_aug' is VOC's train split plus SBD, minus the val split."""
        if split in SBD_SPLITS:
            leave_out = self.split_ids(self.val_split) if split != self.val_split else []
            return sbd_listing(find_sbd_dir(self.sbd_root), SBD_SPLITS[split], leave_out)
        voc_dir = find_voc_dir(self.root, self.year)
        if split == AUG_SPLIT:
            base = self._base_train_split if self._base_train_split != AUG_SPLIT else "train"
            return train_aug_listing(voc_dir, base, self.val_split, self.sbd_dir, self.sbd_list)
        return voc_listing(voc_dir, split)

    def split_ids(self, split: str) -> list[str]:
        """The image ids a split lists (VOC's, a packaged one like seg11valid, or SBD's)."""
        if split in SBD_SPLITS:
            return [image.stem for image, _ in self.split_pairs(split)]
        return read_split(find_voc_dir(self.root, self.year), split)


class SyntheticVOCDataModule(VOCDataModule):
    """The embedded dataset: generated in VOC layout on first use (see src/data/synthetic.py)."""

    def __init__(self, root: str, spec: Mapping[str, Any] | None = None, **kwargs: Any) -> None:
        super().__init__(root=root, year="2012", **kwargs)
        self.spec = dict(spec or {})

    def prepare_data(self) -> None:
        """Generate the dataset unless an identical one (same generator version and spec) is there."""
        from src.data.synthetic import SyntheticSpec, ensure_synthetic_voc

        ensure_synthetic_voc(self.root, SyntheticSpec(**self.spec))
