"""Test data in the FCN reference's layout: SBD as released plus a VOC2012 with seg11valid ids.

`write_synthetic_voc_sbd` draws images with `render_sample` (src/data/synthetic.py) and writes

    <root>/benchmark_RELEASE/dataset/{img/<id>.jpg, cls/<id>.mat, train.txt, val.txt}
    <root>/VOCdevkit/VOC2012/{JPEGImages, SegmentationClass, ImageSets/Segmentation/{train,val}.txt}

under real VOC ids, so the code paths of the reproduction (SBD's .mat masks, the packaged seg11valid
list, leaving validation images out of SBD train) run on a few small files. As on the real data,
VOC val holds some seg11valid ids and some ids that SBD train also has (VOC2011 val and SBD train
intersect; seg11valid is the part that does not), and SBD masks have no 255 borders.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from PIL import Image

from src.data.palette import save_palette_png
from src.data.synthetic import SyntheticSpec, render_sample
from src.data.voc import packaged_split_ids
from src.utils.errors import UserError

SBD_CLASSES = 20  # GTcls.Boundaries holds one boundary map per object class


@dataclass(frozen=True)
class ReferenceLayoutSpec:
    """How many images of each kind the reference layout gets, and how they are drawn."""

    sbd_train: int = 6
    sbd_val: int = 2
    voc_train: int = 2
    seg11valid: int = 3  # the first ones of the packaged list
    overlap: int = 2  # VOC val ids that SBD train holds too (left out when validating on val)
    image: SyntheticSpec = SyntheticSpec(min_size=64, max_size=72)


def sbd_style_ids(count: int, exclude: set[str], start: int = 2) -> list[str]:
    """`count` ids in VOC's 2008_NNNNNN form, none of them in `exclude`."""
    ids, number = [], start
    while len(ids) < count:
        candidate = f"2008_{number:06d}"
        if candidate not in exclude:
            ids.append(candidate)
        number += 1
    return ids


def save_sbd_mat(path: Path, mask: np.ndarray) -> None:
    """Write a class mask as SBD does: a MATLAB struct GTcls {Boundaries, Segmentation, CategoriesPresent}."""
    from scipy.io import savemat

    boundaries = np.empty((SBD_CLASSES, 1), dtype=object)
    for index in range(SBD_CLASSES):
        boundaries[index, 0] = np.zeros(mask.shape, dtype=np.uint8)
    present = np.array([c for c in np.unique(mask) if 0 < c < 255], dtype=np.uint8)
    struct = {"Boundaries": boundaries, "Segmentation": mask, "CategoriesPresent": present}
    savemat(path, {"GTcls": struct})


def _write_list(path: Path, ids: list[str]) -> None:
    """One id per line."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{i}\n" for i in ids))


def _save_jpeg(path: Path, image: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path, format="JPEG", quality=90)


def write_synthetic_voc_sbd(
    root: Path | str, spec: ReferenceLayoutSpec = ReferenceLayoutSpec()
) -> tuple[Path, Path]:
    """Write the reference layout under `root` (an empty or new folder); return (VOC2012 dir, SBD dataset dir)."""
    root = Path(root).expanduser()
    voc, sbd = root / "VOCdevkit" / "VOC2012", root / "benchmark_RELEASE" / "dataset"
    if voc.exists() or sbd.exists():
        raise UserError(f"{root} already holds VOCdevkit/VOC2012 or benchmark_RELEASE; choose an empty folder")
    seg11valid = packaged_split_ids("seg11valid")
    others = sbd_style_ids(spec.sbd_train + spec.sbd_val + spec.voc_train, set(seg11valid))
    sbd_train, rest = others[: spec.sbd_train], others[spec.sbd_train :]
    sbd_lists = {"train": sbd_train, "val": rest[: spec.sbd_val]}
    voc_lists = {
        "train": rest[spec.sbd_val :],
        "val": seg11valid[: spec.seg11valid] + sbd_train[: spec.overlap],
    }
    voc_lists["trainval"] = voc_lists["train"] + voc_lists["val"]
    # One drawing per id, shared by SBD and VOC where both hold it (as the real datasets share
    # images); VOC's masks get the 255 void band, SBD's have none (border 0).
    number = {i: n for n, i in enumerate(dict.fromkeys(others + voc_lists["val"]))}
    sbd_spec = replace(spec.image, border=0)
    for split, ids in sbd_lists.items():
        for sample_id in ids:
            image, mask = render_sample(sbd_spec, "train", number[sample_id])
            _save_jpeg(sbd / "img" / f"{sample_id}.jpg", image)
            (sbd / "cls").mkdir(parents=True, exist_ok=True)
            save_sbd_mat(sbd / "cls" / f"{sample_id}.mat", mask)
        _write_list(sbd / f"{split}.txt", ids)
    (voc / "SegmentationClass").mkdir(parents=True)
    for sample_id in voc_lists["trainval"]:
        image, mask = render_sample(spec.image, "train", number[sample_id])
        _save_jpeg(voc / "JPEGImages" / f"{sample_id}.jpg", image)
        save_palette_png(voc / "SegmentationClass" / f"{sample_id}.png", mask)
    for split, ids in voc_lists.items():
        _write_list(voc / "ImageSets" / "Segmentation" / f"{split}.txt", ids)
    return voc, sbd
