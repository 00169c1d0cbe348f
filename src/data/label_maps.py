"""Label ids as a dataset's mask files hold them -> class indices, and back: the one mapping table.

Benchmarks store more ids in their masks than they score: Cityscapes' `*_gtFine_labelIds.png`
holds 34 label ids of which 19 are trained and scored; ADE20K's annotations hold 0 ("other") and
1..150. A `LabelMap` says which label id each class index stands for and which ids are ignored;
every other value is not in the table (a corrupt or foreign mask). The mask decoder (training,
eval, class weights, the dataset checker) maps ids to classes with it, and predict.py maps its
predictions back to ids with it, for the benchmarks' own evaluation scripts.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache

import numpy as np

from src.utils.errors import UserError

# data.label_map=<name> -> "module:attribute" of its table (imported only when named).
REGISTRY = {
    "cityscapes": "src.data.cityscapes_labels:CITYSCAPES",
    "ade20k": "src.data.ade20k_classes:ADE20K",
}
NOT_IN_TABLE = -1  # what `lookup` holds for an id the table does not know


@dataclass(frozen=True)
class LabelMap:
    """Class index c is label id `class_ids[c]`; `ignored_ids` count nowhere; any other id is an error."""

    name: str
    class_ids: tuple[int, ...]
    ignored_ids: tuple[int, ...]
    class_names: tuple[str, ...]
    palette: tuple[tuple[int, int, int], ...]
    expected: str  # what a mask of this dataset holds, for error messages

    def __post_init__(self) -> None:
        ids = [*self.class_ids, *self.ignored_ids]
        if len(set(ids)) != len(ids) or min(ids) < 0 or max(ids) > 255:
            raise ValueError(f"label map {self.name}: label ids must be unique and in 0..255")
        if not len(self.class_ids) == len(self.class_names) == len(self.palette):
            raise ValueError(f"label map {self.name}: one id, name and colour per class")

    @property
    def num_classes(self) -> int:
        """How many classes the ids map to."""
        return len(self.class_ids)

    def lookup(self, ignore_index: int) -> np.ndarray:
        """int16 (256,) table indexed by label id: the class index, `ignore_index`, or NOT_IN_TABLE."""
        table = np.full(256, NOT_IN_TABLE, dtype=np.int16)
        table[list(self.ignored_ids)] = ignore_index
        table[list(self.class_ids)] = np.arange(self.num_classes)
        return table

    def to_classes(
        self, label_ids: np.ndarray, ignore_index: int
    ) -> tuple[np.ndarray, dict[int, int]]:
        """(uint8 class mask, {label id not in the table: pixel count}) of an integer mask of label ids."""
        ids = np.asarray(label_ids)
        outside = None if ids.dtype == np.uint8 else (ids < 0) | (ids > 255)  # 16-bit masks
        as_bytes = ids if outside is None else np.where(outside, 0, ids).astype(np.uint8)
        classes = self.lookup(ignore_index)[as_bytes]  # one gather per pixel
        unknown = classes == NOT_IN_TABLE
        if outside is not None:
            unknown |= outside
        if not unknown.any():
            return classes.astype(np.uint8), {}
        values, counts = np.unique(ids[unknown], return_counts=True)
        classes[unknown] = ignore_index
        return classes.astype(np.uint8), dict(zip(values.tolist(), counts.tolist(), strict=True))

    def to_label_ids(self, classes: np.ndarray) -> np.ndarray:
        """uint8 label ids of a class mask, for evaluation scripts; any other value -> the first ignored id."""
        table = np.full(256, self.ignored_ids[0] if self.ignored_ids else 0, dtype=np.uint8)
        table[: self.num_classes] = self.class_ids
        return table[np.asarray(classes, dtype=np.uint8)]


def label_map_names() -> list[str]:
    """The names `data.label_map` accepts."""
    return sorted(REGISTRY)


@cache
def get_label_map(name: str) -> LabelMap:
    """The LabelMap registered as `name` (UserError naming data.label_map and the choices otherwise)."""
    if name not in REGISTRY:
        raise UserError(
            f"data.label_map={name!r}: expected one of {', '.join(label_map_names())} (or null: "
            "the masks hold class indices)"
        )
    module, attribute = REGISTRY[name].split(":")
    return getattr(importlib.import_module(module), attribute)


def optional_label_map(name: str | LabelMap | None) -> LabelMap | None:
    """`data.label_map` as a LabelMap: a registered name, a LabelMap, or None."""
    if name is None or isinstance(name, LabelMap):
        return name
    return get_label_map(str(name))


def class_names_of(name: str) -> list[str]:
    """The class names of a registered label map (the `${seglab.class_names:<name>}` resolver)."""
    return list(get_label_map(name).class_names)


def palette_of(name: str) -> list[list[int]]:
    """The class colours of a registered label map (the `${seglab.palette:<name>}` resolver)."""
    return [list(colour) for colour in get_label_map(name).palette]


def check_num_classes(label_map: LabelMap, num_classes: int) -> None:
    """Raise when data.num_classes disagrees with the label map's class count."""
    if label_map.num_classes != num_classes:
        raise UserError(
            f"data.label_map={label_map.name} maps label ids to {label_map.num_classes} classes but "
            f"data.num_classes={num_classes}"
        )


def describe_unknown(unknown: dict[int, int], shown: int = 10) -> str:
    """'40 (12 px), 41 (3 px)' for the first `shown` values not in a table."""
    items: Sequence[tuple[int, int]] = sorted(unknown.items())[:shown]
    return ", ".join(f"{value} ({count} px)" for value, count in items)
