"""ADE20K (SceneParsing) as downloaded: `ADEChallengeData2016/{images,annotations}/{training,validation}`.

Images are `<id>.jpg` (a few are grayscale JPEGs; read_image gives every image three channels),
annotations `<id>.png` holding 0..150, mapped by `data.label_map=ade20k` (src/data/ade20k_classes.py).
"""

from __future__ import annotations

from pathlib import Path

from src.data.datamodule import SegDataModule
from src.data.dataset import SplitListing, split_folder
from src.data.io import IMAGE_SUFFIXES
from src.utils.errors import UserError

FOLDER = "ADEChallengeData2016"
LAYOUT = f"{FOLDER}/images/<split>/<id>.jpg and {FOLDER}/annotations/<split>/<id>.png"


def find_ade20k_dir(root: Path) -> Path:
    """The folder holding images/ and annotations/: `root` itself or its ADEChallengeData2016/."""
    root = Path(root).expanduser()
    for candidate in (root, root / FOLDER):
        if (candidate / "images").is_dir() and (candidate / "annotations").is_dir():
            return candidate
    if not root.exists():
        raise UserError(f"data.root={root} does not exist; expected {LAYOUT}")
    raise UserError(
        f"data.root={root} does not hold ADE20K; expected {LAYOUT} "
        f"(data.root may name {FOLDER} or its parent)"
    )


def ade20k_listing(base: Path, split: str) -> SplitListing:
    """Every image of `images/<split>/` with its `annotations/<split>/<id>.png`; a missing one is noted."""
    image_dir = split_folder(base / "images", split, "ADE20K")
    pairs, missing = [], []
    for image in sorted(p for p in image_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
        mask = base / "annotations" / split / f"{image.stem}.png"
        if mask.is_file():
            pairs.append((image, mask))
        else:
            missing.append(f"split '{split}': no annotation {mask} for image {image}")
    return SplitListing(split, pairs, missing)


class ADE20KDataModule(SegDataModule):
    """ADE20K from `data.root`; the split names are the download's folders (training, validation)."""

    def list_split(self, split: str) -> SplitListing:
        """List a split's (image, annotation) pairs, noting images whose annotation is missing."""
        return ade20k_listing(find_ade20k_dir(self.root), split)
