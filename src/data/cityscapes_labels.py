"""The Cityscapes label table: 34 label ids (plus the license plate's -1), their train ids, names, colours.

As the official table defines it (cityscapesscripts/helpers/labels.py, Cordts et al., CVPR 2016):
`*_gtFine_labelIds.png` holds the label ids 0..33; training and the benchmark use the 19 classes
with a train id 0..18, and the 15 ids with train id 255 count nowhere. The license plate (id -1)
exists only in the instance annotations' polygons and is never drawn in the label-id PNGs.
Colours repeat across ids (several void ids are black, the license plate shares the car's), so
the `*_gtFine_color.png` files cannot be decoded back to ids: the label-id PNGs are what is read.
`*_gtFine_labelTrainIds.png` is not in the download (cityscapesscripts' createTrainIdLabelImgs
writes it); seglab maps the ids itself, through this table.
"""

from __future__ import annotations

from typing import NamedTuple

from src.data.label_maps import LabelMap

IGNORED = 255  # the official table's train id for "not trained, not evaluated"


class Label(NamedTuple):
    """One row of the official table."""

    name: str
    id: int
    train_id: int
    category: str
    color: tuple[int, int, int]


LABELS = (
    Label("unlabeled", 0, IGNORED, "void", (0, 0, 0)),
    Label("ego vehicle", 1, IGNORED, "void", (0, 0, 0)),
    Label("rectification border", 2, IGNORED, "void", (0, 0, 0)),
    Label("out of roi", 3, IGNORED, "void", (0, 0, 0)),
    Label("static", 4, IGNORED, "void", (0, 0, 0)),
    Label("dynamic", 5, IGNORED, "void", (111, 74, 0)),
    Label("ground", 6, IGNORED, "void", (81, 0, 81)),
    Label("road", 7, 0, "flat", (128, 64, 128)),
    Label("sidewalk", 8, 1, "flat", (244, 35, 232)),
    Label("parking", 9, IGNORED, "flat", (250, 170, 160)),
    Label("rail track", 10, IGNORED, "flat", (230, 150, 140)),
    Label("building", 11, 2, "construction", (70, 70, 70)),
    Label("wall", 12, 3, "construction", (102, 102, 156)),
    Label("fence", 13, 4, "construction", (190, 153, 153)),
    Label("guard rail", 14, IGNORED, "construction", (180, 165, 180)),
    Label("bridge", 15, IGNORED, "construction", (150, 100, 100)),
    Label("tunnel", 16, IGNORED, "construction", (150, 120, 90)),
    Label("pole", 17, 5, "object", (153, 153, 153)),
    Label("polegroup", 18, IGNORED, "object", (153, 153, 153)),
    Label("traffic light", 19, 6, "object", (250, 170, 30)),
    Label("traffic sign", 20, 7, "object", (220, 220, 0)),
    Label("vegetation", 21, 8, "nature", (107, 142, 35)),
    Label("terrain", 22, 9, "nature", (152, 251, 152)),
    Label("sky", 23, 10, "sky", (70, 130, 180)),
    Label("person", 24, 11, "human", (220, 20, 60)),
    Label("rider", 25, 12, "human", (255, 0, 0)),
    Label("car", 26, 13, "vehicle", (0, 0, 142)),
    Label("truck", 27, 14, "vehicle", (0, 0, 70)),
    Label("bus", 28, 15, "vehicle", (0, 60, 100)),
    Label("caravan", 29, IGNORED, "vehicle", (0, 0, 90)),
    Label("trailer", 30, IGNORED, "vehicle", (0, 0, 110)),
    Label("train", 31, 16, "vehicle", (0, 80, 100)),
    Label("motorcycle", 32, 17, "vehicle", (0, 0, 230)),
    Label("bicycle", 33, 18, "vehicle", (119, 11, 32)),
    Label("license plate", -1, -1, "vehicle", (0, 0, 142)),
)


def cityscapes_label_map() -> LabelMap:
    """The LabelMap of the table: train id c <- its one label id; ids with train id 255 ignored."""
    trained = sorted(
        (label for label in LABELS if 0 <= label.train_id < IGNORED), key=lambda x: x.train_id
    )
    return LabelMap(
        name="cityscapes",
        class_ids=tuple(label.id for label in trained),
        ignored_ids=tuple(label.id for label in LABELS if label.train_id == IGNORED),
        class_names=tuple(label.name for label in trained),
        palette=tuple(label.color for label in trained),
        expected="Cityscapes label ids 0..33 (*_gtFine_labelIds.png)",
    )


CITYSCAPES = cityscapes_label_map()
