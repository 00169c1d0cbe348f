"""Boundary F-score, BF (Csurka, Larlus and Perronnin, "What is a good evaluation measure for
semantic segmentation?", BMVC 2013).

Per image and class c: the 1-pixel contours of the predicted and the label's c masks (a pixel of
class c with a 4-neighbour of another label; in the label, ignored pixels are another label; the
image frame is not a contour). A contour pixel is matched when a contour pixel of the other map lies
within Euclidean distance theta (`tolerance_px`, default 2, or `tolerance_ratio` x the image
diagonal; MATLAB's `bfscore` default is 0.75 % of it). Precision = matched predicted contour pixels
/ predicted contour pixels on valid pixels; recall = matched label contour pixels / label contour
pixels; F1 = 2PR / (P + R), 0 when one side has no contour, undefined (left out) when neither has.

Two reductions, both reported:
- `mBF` (the paper's and MATLAB's): per image, the mean F1 over its defined classes; then the mean
  over images. `BF/<class>` is the class's F1 averaged over the images where it is defined.
- `mBF_pooled`: matched and total contour pixels summed over the dataset per class, then F1 per
  class and the mean over classes (`BF_pooled/<class>`): every contour pixel weighs the same.
Per-image F1 values are rounded to multiples of 2^-32 (about 2e-10) before they are summed, so the
float64 sums are exact in any order (up to 2^21 images): DDP gives the single-process numbers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from src.metrics.common import (
    SegmentationMetric,
    as_images,
    nan_divide,
    one_of,
    per_class,
    positive,
)
from src.metrics.morphology import dilate_disk, inner_contour

FIXED_POINT = 2.0**32
COUNTS = ("matched_pred", "pred_points", "matched_target", "target_points")


def to_fixed_point(values: Tensor) -> Tensor:
    """float64 values rounded to multiples of 2^-32: their sums do not depend on the order."""
    return torch.round(values.double() * FIXED_POINT) / FIXED_POINT


def f1_from_counts(
    matched_pred: Tensor, pred_points: Tensor, matched_target: Tensor, target_points: Tensor
) -> Tensor:
    """F1 of contour precision and recall; 0 when one side is empty, NaN when both are."""
    precision = nan_divide(matched_pred.double(), pred_points.double()).nan_to_num(0.0)
    recall = nan_divide(matched_target.double(), target_points.double()).nan_to_num(0.0)
    f1 = nan_divide(2 * precision * recall, precision + recall).nan_to_num(0.0)
    return torch.where((pred_points + target_points) > 0, f1, math.nan)


class BoundaryFScore(SegmentationMetric):
    """Boundary F1 per class, averaged over images (`mBF`) and pooled over the dataset (`mBF_pooled`)."""

    def __init__(
        self,
        num_classes: int,
        ignore_index: int = 255,
        tolerance_px: float | None = 2.0,
        tolerance_ratio: float | None = None,
    ) -> None:
        super().__init__()
        one_of(("tolerance_px", "tolerance_ratio"), (tolerance_px, tolerance_ratio))
        # theta = 0 is allowed: contours must then meet pixel for pixel
        self.tolerance_px = positive("tolerance_px", tolerance_px, allow_none=True, allow_zero=True)
        self.tolerance_ratio = positive(
            "tolerance_ratio", tolerance_ratio, allow_none=True, allow_zero=True
        )
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        zeros = torch.zeros(num_classes, dtype=torch.long)
        for name in COUNTS:
            self.add_state(name, default=zeros.clone(), dist_reduce_fx="sum")
        self.add_state("class_f1_sum", default=zeros.double(), dist_reduce_fx="sum")
        self.add_state("class_images", default=zeros.clone(), dist_reduce_fx="sum")
        self.add_state(
            "image_f1_sum", default=torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum"
        )
        self.add_state("images", default=torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")

    def tolerance(self, height: int, width: int) -> float:
        """theta in pixels for an image of this size."""
        if self.tolerance_px is not None:
            return self.tolerance_px
        return self.tolerance_ratio * math.hypot(height, width)

    def update(self, pred: Tensor, target: Tensor) -> None:
        """Add whole (unpadded) images of one size: (N, H, W) or (H, W) class indices."""
        pred, target = as_images(pred, target)
        counts = self.contour_counts(pred, target)  # each (N, C)
        for name, value in zip(COUNTS, counts, strict=True):
            setattr(self, name, getattr(self, name) + value.sum(0))
        f1 = f1_from_counts(*counts)  # (N, C), NaN where undefined
        defined = ~f1.isnan()
        self.class_f1_sum += to_fixed_point(f1.nan_to_num(0.0)).sum(0)
        self.class_images += defined.sum(0)
        scored = defined.any(1)
        image_f1 = to_fixed_point(f1[scored].nanmean(1))
        self.image_f1_sum += image_f1.sum()
        self.images += int(scored.sum())

    def contour_counts(self, pred: Tensor, target: Tensor) -> tuple[Tensor, ...]:
        """Matched and total contour pixels of prediction and label, each (N, C) int64."""
        batch = pred.shape[0]
        valid = target != self.ignore_index
        pred_contour = inner_contour(pred)
        target_contour = inner_contour(target) & valid
        classes = torch.unique(torch.cat([pred[pred_contour], target[target_contour]]))
        counts = [
            torch.zeros(batch, self.num_classes, dtype=torch.long, device=pred.device)
            for _ in COUNTS
        ]
        if classes.numel() == 0:
            return tuple(counts)
        # contour masks only for the classes that have one: (N, K, H, W)
        per_class_pred = pred_contour.unsqueeze(1) & (
            pred.unsqueeze(1) == classes.view(1, -1, 1, 1)
        )
        per_class_target = target_contour.unsqueeze(1) & (
            target.unsqueeze(1) == classes.view(1, -1, 1, 1)
        )
        theta = self.tolerance(*pred.shape[-2:])
        near_target = dilate_disk(per_class_target, theta)
        near_pred = dilate_disk(per_class_pred, theta)
        # a predicted contour on ignored pixels is neither right nor wrong
        scored_pred = per_class_pred & valid.unsqueeze(1)
        found = (
            scored_pred & near_target,
            scored_pred,
            per_class_target & near_pred,
            per_class_target,
        )
        for total, mask in zip(counts, found, strict=True):
            total[:, classes] = mask.sum((-2, -1))
        return tuple(counts)

    def compute(self) -> dict[str, Tensor]:
        """mBF and BF per class (image averages), mBF_pooled and BF_pooled per class; NaN where undefined."""
        class_bf = nan_divide(self.class_f1_sum, self.class_images.double())
        pooled = f1_from_counts(*(getattr(self, name) for name in COUNTS))
        return {
            "mBF": nan_divide(self.image_f1_sum, self.images.double()),
            "BF": class_bf,
            "mBF_pooled": pooled.nanmean(),
            "BF_pooled": pooled,
        }

    def scalars(self, scores: dict[str, Tensor], class_names: Sequence[str]) -> dict[str, Tensor]:
        """mBF, mBF_pooled and BF/<class>."""
        return {
            "mBF": scores["mBF"],
            "mBF_pooled": scores["mBF_pooled"],
            **per_class("BF", scores["BF"], class_names),
        }
