"""Cityscapes as downloaded: `leftImg8bit/<split>/<city>/*_leftImg8bit.png` with `gtFine/.../*_gtFine_labelIds.png`.

The label-id PNGs are read as they are and mapped to the 19 train ids through the official table
(src/data/cityscapes_labels.py, `data.label_map=cityscapes`); nothing has to be converted first.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from src.data.datamodule import SegDataModule
from src.data.dataset import SplitListing, split_folder
from src.utils.errors import UserError

IMAGES_DIR = "leftImg8bit"
IMAGE_SUFFIX = "_leftImg8bit.png"
LAYOUT = (
    "leftImg8bit/{train,val,test}/<city>/<frame>_leftImg8bit.png and "
    "{annotations}/{train,val,test}/<city>/<frame>_{annotations}_labelIds.png"
)


def find_cityscapes_dir(root: Path, annotations: str = "gtFine") -> Path:
    """The folder holding leftImg8bit/ and the annotation folder: `root` itself or one folder inside it."""
    root = Path(root).expanduser()

    def holds_both(folder: Path) -> bool:
        return (folder / IMAGES_DIR).is_dir() and (folder / annotations).is_dir()

    if holds_both(root):
        return root
    inside = sorted(child for child in root.iterdir() if holds_both(child)) if root.is_dir() else []
    if len(inside) == 1:
        return inside[0]
    expected = LAYOUT.replace("{annotations}", annotations)
    if not root.exists():
        raise UserError(
            f"data.root={root} does not exist; expected a Cityscapes folder holding {expected}"
        )
    if len(inside) > 1:
        raise UserError(
            f"data.root={root} holds several Cityscapes folders ({', '.join(map(str, inside))}); "
            "name one of them"
        )
    raise UserError(
        f"data.root={root} does not hold the Cityscapes dataset; expected {expected} "
        "(data.root may name the folder holding both, or its parent)"
    )


def frame_of(image: Path) -> str:
    """`<city>_<seq>_<frame>` of a `*_leftImg8bit.png` file name."""
    return image.name[: -len(IMAGE_SUFFIX)]


def cityscapes_listing(base: Path, split: str, annotations: str = "gtFine") -> SplitListing:
    """Every image of `leftImg8bit/<split>/*/` with its `<annotations>_labelIds.png`; a missing one is noted."""
    image_dir = split_folder(base / IMAGES_DIR, split, "Cityscapes")
    pairs, missing = [], []
    for image in sorted(image_dir.glob(f"*/*{IMAGE_SUFFIX}")):
        city = image.parent.name
        mask = base / annotations / split / city / f"{frame_of(image)}_{annotations}_labelIds.png"
        if mask.is_file():
            pairs.append((image, mask))
        else:
            missing.append(f"split '{split}': no mask {mask} for image {image}")
    return SplitListing(split, pairs, missing)


class CityscapesDataModule(SegDataModule):
    """Cityscapes from `data.root`; the split names are the folder names (train, val, test, train_extra).

    `annotations` is gtFine (the benchmark's fine labels) or gtCoarse (20k coarse labels, with the
    train_extra split); both store `*_<annotations>_labelIds.png`, mapped by `data.label_map`.
    """

    def __init__(self, root: str, annotations: str = "gtFine", **kwargs: Any) -> None:
        super().__init__(root=root, **kwargs)
        self.annotations = str(annotations)

    def list_split(self, split: str) -> SplitListing:
        """List a split's (image, label-id mask) pairs, noting images whose mask is missing."""
        return cityscapes_listing(
            find_cityscapes_dir(self.root, self.annotations), split, self.annotations
        )
