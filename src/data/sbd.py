"""SBD (Hariharan et al. 2011) two ways: as released, and as VOC 2012's "train_aug".

As released (`data.sbd_root`): benchmark_RELEASE/dataset/{img/<id>.jpg, cls/<id>.mat, train.txt,
val.txt}; `data.train_split=sbd_train` is SBD's own train list (8,498 images), the FCN reference's
training set. "train_aug": VOC train plus the SBD masks converted to PNG (SegmentationClassAug),
the 10,582-image set of DeepLab and most VOC papers. SBD re-annotates 11,355 VOC images, some of
them in VOC val; either way every image of the validation split is left out of training, which
would otherwise leak val into train.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

from src.data.dataset import SplitListing
from src.data.voc import listing_of, read_id_list, read_split
from src.utils.errors import UserError

log = logging.getLogger(__name__)

AUG_SPLIT = "train_aug"
# Names the list goes by in the common SegmentationClassAug distributions.
AUG_LIST_NAMES = ("train_aug.txt", "trainaug.txt")
# Split names that read SBD's own lists (benchmark_RELEASE/dataset/<list>.txt) from data.sbd_root.
SBD_SPLITS = {"sbd_train": "train", "sbd_val": "val"}
SBD_LAYOUT = "benchmark_RELEASE/dataset/{img/<id>.jpg, cls/<id>.mat, train.txt, val.txt}"


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


def find_sbd_dir(root: str | Path | None) -> Path:
    """SBD's `dataset` folder given it, the `benchmark_RELEASE` folder holding it, or their parent."""
    if root is None:
        raise UserError(
            f"data.train_split/val_split {sorted(SBD_SPLITS)} read SBD as released: set data.sbd_root "
            f"to the folder holding {SBD_LAYOUT}"
        )
    root = Path(root).expanduser()
    for candidate in (root, root / "dataset", root / "benchmark_RELEASE" / "dataset"):
        if (candidate / "img").is_dir() and (candidate / "cls").is_dir():
            return candidate
    state = "does not exist" if not root.exists() else "does not hold SBD"
    raise UserError(
        f"data.sbd_root={root} {state}; expected SBD as released, {SBD_LAYOUT} (data.sbd_root may "
        "name benchmark_RELEASE, its dataset folder, or their parent)"
    )


def sbd_mask_path(sbd_dir: Path, sample_id: str) -> Path:
    """`cls/<id>.mat`, or the `cls/<id>.png` the FCN reference's convert_sbdd.py writes beside it."""
    mat = sbd_dir / "cls" / f"{sample_id}.mat"
    png = mat.with_suffix(".png")
    return png if not mat.is_file() and png.is_file() else mat


def sbd_listing(sbd_dir: Path, split: str, leave_out: Iterable[str] = ()) -> SplitListing:
    """The (img/<id>.jpg, cls/<id>.mat) pairs of SBD's `<split>.txt`, without the ids in `leave_out`."""
    name = next(key for key, value in SBD_SPLITS.items() if value == split)
    ids = read_id_list(sbd_dir / f"{split}.txt", f"SBD split list ({name})")
    excluded = set(leave_out)
    kept = [i for i in ids if i not in excluded]
    log.info("%s: %d images (%d validation images left out)", name, len(kept), len(ids) - len(kept))
    pairs = [(sbd_dir / "img" / f"{i}.jpg", sbd_mask_path(sbd_dir, i)) for i in kept]
    return listing_of(name, pairs)
