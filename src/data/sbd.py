"""VOC 2012 + SBD "train_aug": VOC train plus SBD masks (SegmentationClassAug), minus every VOC val image.

The 10,582-image set of DeepLab and most VOC papers: SBD (Hariharan et al. 2011) re-annotates
11,355 VOC images, some of which are in VOC 2012 val; training on those would leak val into train.
"""

from __future__ import annotations

import logging
from pathlib import Path

from src.data.dataset import SplitListing
from src.data.voc import listing_of, read_id_list, read_split
from src.utils.errors import UserError

log = logging.getLogger(__name__)

AUG_SPLIT = "train_aug"
# Names the list goes by in the common SegmentationClassAug distributions.
AUG_LIST_NAMES = ("train_aug.txt", "trainaug.txt")


def train_aug_ids(
    voc_dir: Path, aug_dir: Path, train_split: str, aug_list: Path | None
) -> list[str]:
    """Ids of VOC's train split plus SBD's (from `aug_list`, a train_aug list, or every mask in aug_dir)."""
    lists = voc_dir / "ImageSets" / "Segmentation"
    found = next((lists / name for name in AUG_LIST_NAMES if (lists / name).is_file()), None)
    if aug_list is not None:
        sbd_ids = read_id_list(aug_list, "data.sbd_list")
    elif found is not None:
        sbd_ids = read_id_list(found, "SBD list")
    else:
        sbd_ids = sorted(p.stem for p in aug_dir.glob("*.png"))
    return list(dict.fromkeys([*read_split(voc_dir, train_split), *sbd_ids]))


def train_aug_listing(
    voc_dir: Path,
    train_split: str = "train",
    val_split: str = "val",
    aug_dir: str | Path = "SegmentationClassAug",
    aug_list: str | Path | None = None,
) -> SplitListing:
    """List train_aug's pairs: masks from `aug_dir` (VOC's own where SBD has none), no VOC val image."""
    aug_path = voc_dir / aug_dir  # an absolute aug_dir replaces voc_dir
    if not aug_path.is_dir():
        raise UserError(
            f"data.use_sbd=true needs the SBD masks in {aug_path} (data.sbd_dir; the SegmentationClassAug "
            "folder of the 'train_aug' distribution, one PNG of class indices per image id)"
        )
    ids = train_aug_ids(
        voc_dir, aug_path, train_split, None if aug_list is None else voc_dir / aug_list
    )
    val_ids = set(read_split(voc_dir, val_split))
    kept = [i for i in ids if i not in val_ids]
    log.info(
        "train_aug: %d images (%d VOC %s images left out)",
        len(kept),
        len(ids) - len(kept),
        val_split,
    )
    pairs = []
    for i in kept:
        mask, voc_mask = aug_path / f"{i}.png", voc_dir / "SegmentationClass" / f"{i}.png"
        if not mask.is_file() and voc_mask.is_file():
            mask = voc_mask
        pairs.append((voc_dir / "JPEGImages" / f"{i}.jpg", mask))
    return listing_of(AUG_SPLIT, pairs)
