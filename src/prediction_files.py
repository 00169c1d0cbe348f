"""predict.py's files: which images it reads, where each mask goes, and the mask formats.

Inputs are a file, a folder (searched recursively: Cityscapes' val images sit in city subfolders)
or a glob. Masks mirror the inputs' subfolders under the output folder, one `<stem>.png` each, and
the output folder holds nothing else: overlays go to the sibling folder `<output>_overlays/`.
That is what benchmark scripts need: Cityscapes' evalPixelLevelSemanticLabeling searches its
results folder recursively for one `<city>_<seq>_<frame>*.png` per ground-truth frame and stops
with "Found multiple predictions" when a second file matches.

Formats (`predict.format`): `palette` writes class indices as a palette PNG (VOC's format; the
colours are the dataset's); `label_ids` writes the dataset's own label ids as a grayscale PNG,
through the label map (src/data/label_maps.py): Cityscapes' 0..33 ids for its official
evaluation and server, ADE20K's 1..150. Without a label map the class indices are the ids.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from src.data.io import IMAGE_SUFFIXES
from src.data.label_maps import LabelMap
from src.data.palette import save_palette_png
from src.utils.errors import UserError

FORMATS = ("palette", "label_ids")
OVERLAY_SUFFIX = "_overlays"


def _images_in(folder: Path) -> list[Path]:
    """Every image file below `folder`, in the order of their paths."""
    return sorted(
        p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
    )


def list_inputs(spec: str) -> list[Path]:
    """The image files named by a file, a folder (recursively, sorted) or a glob pattern."""
    path = Path(spec).expanduser()
    if path.is_file():
        files = [path]
    elif path.is_dir():
        files = _images_in(path)
    elif glob.has_magic(spec):
        matches = glob.glob(str(path), recursive=True)
        files = sorted(Path(p) for p in matches if Path(p).suffix.lower() in IMAGE_SUFFIXES)
    else:
        raise UserError(
            f"input={spec} does not exist; expected an image file, a folder of images or a glob pattern"
        )
    if not files:
        raise UserError(f"input={spec} names no images (looked for {', '.join(IMAGE_SUFFIXES)})")
    return files


def input_base(spec: str, files: Sequence[Path]) -> Path:
    """The folder the outputs mirror: the input folder, else the deepest folder holding every match."""
    path = Path(spec).expanduser()
    if path.is_dir():
        return path
    return Path(os.path.commonpath([str(file.parent.resolve()) for file in files]))


def output_names(files: Sequence[Path], base: Path) -> list[Path]:
    """Each input's mask path relative to the output folder: its subfolder under `base`, `<stem>.png`."""
    names: dict[Path, Path] = {}
    for file in files:
        relative = file.resolve().relative_to(base.resolve()).with_suffix(".png")
        if relative in names:
            raise UserError(
                f"{names[relative]} and {file} would both be predicted into {relative} "
                "(same folder and stem); rename one or predict them separately"
            )
        names[relative] = file
    return list(names)


def overlay_folder(output: Path) -> Path:
    """Where overlays go: `<output>_overlays/`, beside the output folder, never inside it."""
    return output.parent / f"{output.name}{OVERLAY_SUFFIX}"


def check_output(output: Path, spec: str, files: Sequence[Path], names: Sequence[Path]) -> None:
    """Refuse an output folder where a mask would overwrite an input image, or, for a folder input
    (read recursively), one inside it: a later run on that folder would read the masks as images."""
    folder = Path(spec).expanduser()
    target = output.resolve()
    if folder.is_dir() and (target == folder.resolve() or folder.resolve() in target.parents):
        raise UserError(
            f"output={output} lies inside the input folder {folder}, which is read recursively: a "
            "later run on it would read the masks as images; choose an output folder elsewhere"
        )
    inputs = {file.resolve() for file in files}
    clash = next((name for name in names if (output / name).resolve() in inputs), None)
    if clash is not None:
        raise UserError(
            f"output={output}: the mask {output / clash} would overwrite the input image of that "
            "name; choose an output folder outside the inputs' folders"
        )


def check_format(name: str) -> str:
    """predict.format, checked."""
    if name not in FORMATS:
        raise UserError(f"predict.format={name!r}: expected one of {', '.join(FORMATS)}")
    return name


def write_mask(
    path: Path, mask: np.ndarray, fmt: str, colours: np.ndarray, label_map: LabelMap | None
) -> None:
    """Write a class mask in `fmt`: a palette PNG of class indices, or a grayscale PNG of label ids."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "palette":
        save_palette_png(path, mask, colours)  # pixel values are the class indices, as in VOC
        return
    ids = label_map.to_label_ids(mask) if label_map is not None else mask.astype(np.uint8)
    Image.fromarray(ids).save(path)  # mode "L": what evaluation scripts read as label ids
