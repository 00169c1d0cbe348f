"""Boundary IoU for semantic segmentation (Cheng et al., "Boundary IoU", CVPR 2021).

Per image and class c, the boundary band of width d of the predicted mask (`pred == c`, as
predicted) and of the label's mask (`target == c`, ignored pixels being not-c) is the mask minus its
erosion, computed as boundary-iou-api's `mask_to_boundary` does: the mask padded with zeros first,
so the image frame counts as boundary. d = max(1, round(ratio * image diagonal)) on the image's own
unpadded size, or a width in pixels. The intersection and union of the two bands count valid
pixels only and are summed over the dataset per class: BIoU/c = sum(I) / sum(U), NaN (left out of
mBIoU) for a class whose union is empty. detectron2's semantic variant erodes the label map, which
measures label changes rather than each class's boundary.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from src.metrics.common import (
    MetricConfigError,
    SegmentationMetric,
    as_images,
    nan_divide,
    one_of,
    per_class,
    positive,
)
from src.metrics.morphology import boundary_band


def band_width(height: int, width: int, ratio: float | None, pixels: int | None) -> int:
    """The band's width d in pixels: `pixels`, or max(1, round(ratio * diagonal)) as boundary-iou-api rounds."""
    if pixels is not None:
        return pixels
    return max(1, int(round(ratio * math.hypot(height, width))))


class BoundaryIoU(SegmentationMetric):
    """Per-class Boundary IoU summed over the dataset; reports mBIoU and BIoU/<class>."""

    def __init__(
        self,
        num_classes: int,
        ignore_index: int = 255,
        dilation_ratio: float | None = 0.02,
        dilation_px: int | None = None,
    ) -> None:
        super().__init__()
        one_of(("dilation_ratio", "dilation_px"), (dilation_ratio, dilation_px))
        self.dilation_ratio = positive("dilation_ratio", dilation_ratio, allow_none=True)
        if dilation_px is not None and (
            isinstance(dilation_px, bool) or not isinstance(dilation_px, int) or dilation_px < 1
        ):
            raise MetricConfigError(
                f"dilation_px={dilation_px!r}: expected a whole number of pixels >= 1"
            )
        self.dilation_px = dilation_px
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        for name in ("intersection", "union"):
            self.add_state(
                name, default=torch.zeros(num_classes, dtype=torch.long), dist_reduce_fx="sum"
            )

    def update(self, pred: Tensor, target: Tensor) -> None:
        """Add whole (unpadded) images of one size: (N, H, W) or (H, W) class indices."""
        pred, target = as_images(pred, target)
        d = band_width(*pred.shape[-2:], self.dilation_ratio, self.dilation_px)
        valid = target != self.ignore_index
        # every pixel belongs to exactly one predicted class, so one band map holds every class's band
        pred_band = boundary_band(pred, d) & valid
        target_band = boundary_band(target, d) & valid
        both = pred_band & target_band & (pred == target)
        count = self._count_per_class
        intersection = count(pred[both])
        self.intersection += intersection
        self.union += count(pred[pred_band]) + count(target[target_band]) - intersection

    def _count_per_class(self, labels: Tensor) -> Tensor:
        return torch.bincount(labels, minlength=self.num_classes)

    def compute(self) -> dict[str, Tensor]:
        """BIoU per class (NaN where the union is empty) and their mean, mBIoU."""
        biou = nan_divide(self.intersection.double(), self.union.double())
        return {"mBIoU": biou.nanmean(), "BIoU": biou}

    def scalars(self, scores: dict[str, Tensor], class_names: Sequence[str]) -> dict[str, Tensor]:
        """mBIoU and BIoU/<class>."""
        return {"mBIoU": scores["mBIoU"], **per_class("BIoU", scores["BIoU"], class_names)}
