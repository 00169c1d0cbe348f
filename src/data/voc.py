"""Pascal VOC layout: locating the dataset, reading split lists, listing image/mask pairs."""

from __future__ import annotations

import logging
from importlib import resources
from pathlib import Path

from src.data.dataset import SplitListing
from src.utils.errors import UserError

log = logging.getLogger(__name__)

VOC_LAYOUT = (
    "VOCdevkit/VOC{year}/{{JPEGImages, SegmentationClass, ImageSets/Segmentation/<split>.txt}}"
)
# Splits seglab ships (src/data/splits/<name>.txt), each drawn from a VOC split.
# seg11valid: the 736 images of VOC2011 segmentation val that are not in SBD train, where the FCN
# reference validates (Long et al., PAMI 2016, footnote 7; fcn.berkeleyvision.org data/pascal/).
PACKAGED_SPLITS = {"seg11valid": "val"}
PACKAGED_SIZES = {"seg11valid": 736}

def find_voc_dir(root: str | Path, year: str = "2012") -> Path:
    """Return the `VOC<year>` folder given it, the `VOCdevkit` folder holding it, or their parent."""
    root = Path(root).expanduser()
    for candidate in (root, root / f"VOC{year}", root / "VOCdevkit" / f"VOC{year}"):
        if (candidate / "JPEGImages").is_dir() and (candidate / "SegmentationClass").is_dir():
            return candidate
    expected = VOC_LAYOUT.format(year=year)
    if not root.exists():
        raise UserError(
            f"data.root={root} does not exist; expected a Pascal VOC folder laid out as {expected}"
        )
    raise UserError(
        f"data.root={root} does not hold a Pascal VOC {year} dataset; expected {expected} "
        f"(data.root may name VOCdevkit, VOC{year} inside it, or their parent)"
    )


def read_id_list(path: Path, what: str = "split file") -> list[str]:
    """Read one id per line (the first word; blank lines skipped); a missing or empty list is an error."""
    if not path.is_file():
        raise UserError(f"{what} {path} is missing; expected one image id per line")
    ids = [line.split()[0] for line in path.read_text().splitlines() if line.strip()]
    if not ids:
        raise UserError(f"{what} {path} lists no images (empty split)")
    return ids


def read_split(voc_dir: Path, split: str) -> list[str]:
    """Read the image ids listed in `ImageSets/Segmentation/<split>.txt` (or a packaged split); empty is an error."""
    if split in PACKAGED_SPLITS:
        return packaged_voc_split(voc_dir, split)
    return read_id_list(voc_dir / "ImageSets" / "Segmentation" / f"{split}.txt")


def packaged_split_ids(name: str) -> list[str]:
    """The ids of the split seglab ships as `src/data/splits/<name>.txt`."""
    text = resources.files("src.data").joinpath("splits", f"{name}.txt").read_text()
    return [line.split()[0] for line in text.splitlines() if line.strip()]


def packaged_voc_split(voc_dir: Path, name: str) -> list[str]:
    """A packaged split's ids that `voc_dir`'s own parent split lists (all of them on the real dataset).

    A smaller count (a partial or synthetic copy of VOC) is logged as a warning: scores on it are not
    comparable with the published ones.
    """
    parent = PACKAGED_SPLITS[name]
    listed = set(read_id_list(voc_dir / "ImageSets" / "Segmentation" / f"{parent}.txt"))
    ids = [i for i in packaged_split_ids(name) if i in listed]
    if not ids:
        raise UserError(
            f"split '{name}': none of its {PACKAGED_SIZES[name]} ids is listed in {voc_dir}/ImageSets/"
            f"Segmentation/{parent}.txt; expected Pascal VOC 2011 or 2012 (data.root, data.year)"
        )
    if len(ids) < PACKAGED_SIZES[name]:
        log.warning(
            "split '%s': only %d of its %d images are in %s's %s split; scores on it are not "
            "comparable with published %s numbers",
            name,
            len(ids),
            PACKAGED_SIZES[name],
            voc_dir,
            parent,
            name,
        )
    return ids


def listing_of(split: str, pairs: list[tuple[Path, Path]]) -> SplitListing:
    """A SplitListing for `pairs`, with one line per pair whose image or mask file is missing."""
    present, missing = [], []
    for image, mask in pairs:
        gone = [
            f"{kind} {path}"
            for kind, path in (("image", image), ("mask", mask))
            if not path.is_file()
        ]
        if gone:
            missing.append(f"split '{split}': missing {' and '.join(gone)}")
        else:
            present.append((image, mask))
    return SplitListing(split, present, missing)


def voc_listing(voc_dir: Path, split: str, mask_dir: str = "SegmentationClass") -> SplitListing:
    """List the (image, mask) paths of a VOC split, noting listed files that do not exist."""
    ids = read_split(voc_dir, split)
    return listing_of(
        split, [(voc_dir / "JPEGImages" / f"{i}.jpg", voc_dir / mask_dir / f"{i}.png") for i in ids]
    )


def summarise(lines: list[str], headline: str, shown: int = 5) -> str:
    """One message: the headline, the first `shown` lines, and how many more there are."""
    more = f"; and {len(lines) - shown} more" if len(lines) > shown else ""
    return f"{headline}: " + "; ".join(lines[:shown]) + more
