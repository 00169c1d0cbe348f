"""Scores of each image on its own: the table behind per_image.csv and `mIoU_image`.

Per image: IoU per class over its valid pixels (NaN where the class is in neither its label nor its
prediction), its mIoU (the mean over the classes present in its label or prediction), pixel
accuracy and the number of valid pixels. `mIoU_image` is the mean of the images' mIoU; it is not the
dataset's mIoU, which divides intersections and unions summed over all images: a small object
missed in one image weighs a whole class of that image here, a few pixels there.

A table of images cannot be a sum, so these states are gathered across processes (torchmetrics'
"cat"): each image's row, its name as UTF-8 bytes. Rows are sorted by name before anything is
averaged, so the result does not depend on how images were split between processes.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from src.metrics.common import SegmentationMetric, as_images, nan_divide

ROWS = ("intersection", "union", "correct", "valid", "name_bytes", "name_lengths")


def encode_names(names: Sequence[str], device: torch.device) -> tuple[Tensor, Tensor]:
    """Names as one float64 tensor of UTF-8 bytes and one of lengths (a state that gathers like the rest)."""
    encoded = [name.encode("utf-8") for name in names]
    data = torch.tensor(
        [byte for name in encoded for byte in name], dtype=torch.float64, device=device
    )
    lengths = torch.tensor([len(name) for name in encoded], dtype=torch.float64, device=device)
    return data, lengths


def decode_names(data: Tensor, lengths: Tensor) -> list[str]:
    """Inverse of `encode_names`."""
    raw = bytes(data.to(torch.uint8).tolist())
    names, start = [], 0
    for length in lengths.long().tolist():
        names.append(raw[start : start + length].decode("utf-8"))
        start += length
    return names


def image_counts(
    pred: Tensor, target: Tensor, num_classes: int, ignore_index: int
) -> dict[str, Tensor]:
    """Per image (N, C) intersection and union over valid pixels, (N,) correct and valid pixels, int64."""
    batch = pred.shape[0]
    valid = target != ignore_index
    image = torch.arange(batch, device=pred.device).view(-1, 1, 1).expand_as(pred)
    size = batch * num_classes

    def per_image_class(labels: Tensor, where: Tensor) -> Tensor:
        index = image[where] * num_classes + labels[where]
        return torch.bincount(index, minlength=size).view(batch, num_classes)

    hit = valid & (pred == target)
    intersection = per_image_class(target, hit)
    union = per_image_class(target, valid) + per_image_class(pred, valid) - intersection
    return {
        "intersection": intersection,
        "union": union,
        "correct": hit.flatten(1).sum(1),
        "valid": valid.flatten(1).sum(1),
    }


class PerImageScores(SegmentationMetric):
    """One row per image (name, mIoU, pixel accuracy, valid pixels, IoU per class) and `mIoU_image`."""

    inputs = ("pred", "target", "names")

    def __init__(self, num_classes: int, ignore_index: int = 255) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        for name in ROWS:
            # float64 (exact for counts below 2^53): an empty rank's placeholder is float, and cat must not round
            self.add_state(name, default=[], dist_reduce_fx="cat")

    def update(self, pred: Tensor, target: Tensor, names: Sequence[str]) -> None:
        """Add whole (unpadded) images of one size, (N, H, W) or (H, W), and their N names."""
        pred, target = as_images(pred, target)
        if len(names) != pred.shape[0]:
            raise ValueError(f"{len(names)} names for {pred.shape[0]} images")
        counts = image_counts(pred, target, self.num_classes, self.ignore_index)
        for name, value in counts.items():
            getattr(self, name).append(value.double().flatten())
        data, lengths = encode_names(names, pred.device)
        self.name_bytes.append(data)
        self.name_lengths.append(lengths)

    def _rows(self, name: str) -> Tensor:
        value = getattr(self, name)  # a list before a sync, one tensor after
        if isinstance(value, Tensor):
            return value
        return (
            torch.cat(value) if value else torch.zeros(0, dtype=torch.float64, device=self.device)
        )

    def compute(self) -> dict[str, Tensor | list[str]]:
        """Rows sorted by image name: names, IoU (N, C), mIoU, pixel accuracy, valid pixels; and mIoU_image."""
        names = decode_names(self._rows("name_bytes"), self._rows("name_lengths"))
        order = sorted(range(len(names)), key=names.__getitem__)
        index = torch.tensor(order, dtype=torch.long, device=self.device)
        intersection = self._rows("intersection").view(-1, self.num_classes)[index]
        union = self._rows("union").view(-1, self.num_classes)[index]
        correct, valid = self._rows("correct")[index], self._rows("valid")[index]
        iou = nan_divide(intersection, union)
        miou = iou.nanmean(1) if len(order) else torch.zeros(0, dtype=torch.float64)
        return {
            "names": [names[i] for i in order],
            "IoU": iou,
            "mIoU": miou,
            "pixel_accuracy": nan_divide(correct, valid),
            "valid": valid.long(),
            "mIoU_image": miou.nanmean(),
        }

    def scalars(self, scores: dict[str, Tensor], class_names: Sequence[str]) -> dict[str, Tensor]:
        """mIoU_image (the mean over images; never called mIoU)."""
        return {"mIoU_image": scores["mIoU_image"]}
