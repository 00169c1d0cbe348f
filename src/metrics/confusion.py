"""Confusion-matrix segmentation metrics as the FCN paper defines them (Long et al. 2015, sec. 5).

torchmetrics' JaccardIndex scores classes absent from both labels and predictions as 0
(torchmetrics #1693); the literature leaves them out of the mean. Here a class whose union is empty
is NaN per class and excluded from every mean.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from src.metrics.common import SegmentationMetric, check_shapes, nan_divide, per_class

# The dataset-level scores logged as `<stage>/<name>` (per-class IoU as `<stage>/IoU/<class>`).
SUMMARY_METRICS = ("mIoU", "mAcc", "aAcc", "FWIoU", "mDice")


def confusion_matrix(
    pred: torch.Tensor, target: torch.Tensor, num_classes: int, ignore_index: int
) -> torch.Tensor:
    """(C, C) int64 counts, rows = ground truth, columns = prediction; ignore_index pixels excluded."""
    # int64 before any comparison or product: on a uint8 mask `!= -1` wraps and `* C` overflows
    target, pred = target.long(), pred.long()
    valid = target != ignore_index
    index = target[valid] * num_classes + pred[valid]
    return torch.bincount(index, minlength=num_classes**2).reshape(num_classes, num_classes)


def scores_from_confusion(matrix: torch.Tensor) -> dict[str, torch.Tensor]:
    """aAcc, mAcc, mIoU, FWIoU, mDice and per-class IoU/Acc/Dice (NaN where undefined) from a confusion matrix."""
    matrix = matrix.double()
    tp = matrix.diag()
    gt = matrix.sum(1)
    pred = matrix.sum(0)
    union = gt + pred - tp
    iou = nan_divide(tp, union)
    acc = nan_divide(tp, gt)
    dice = nan_divide(2 * tp, gt + pred)
    total = matrix.sum()
    freq = gt / total if total > 0 else gt
    undefined = torch.tensor(float("nan"), dtype=torch.float64)  # nothing labelled: no accuracy
    return {
        "aAcc": tp.sum() / total if total > 0 else undefined,
        "mAcc": acc.nanmean(),
        "mIoU": iou.nanmean(),
        # FWIoU sums over classes present in the labels; classes only predicted have freq 0.
        "FWIoU": (freq * iou.nan_to_num()).sum() if total > 0 else undefined,
        "mDice": dice.nanmean(),
        "IoU": iou,
        "Acc": acc,
        "Dice": dice,
    }


class SegmentationMetrics(SegmentationMetric):
    """Accumulates a C x C confusion matrix (summed across processes) and reports `scores_from_confusion`."""

    padding_safe = True

    def __init__(self, num_classes: int, ignore_index: int = 255) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.add_state(
            "confmat",
            default=torch.zeros(num_classes, num_classes, dtype=torch.long),
            dist_reduce_fx="sum",
        )
        # The matrix behind the latest compute(), summed over processes: the state itself is local
        # again after compute() and zero after reset(), so the confusion-matrix image reads this.
        self.last_confmat: torch.Tensor | None = None

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """Add a batch of predicted class indices and ground-truth masks of the same shape."""
        check_shapes(pred, target)
        self.confmat += confusion_matrix(pred, target, self.num_classes, self.ignore_index)

    def compute(self) -> dict[str, torch.Tensor]:
        """Scores over everything accumulated since the last reset (all processes' counts summed), and the matrix."""
        self.last_confmat = self.confmat.detach().clone()
        return {**scores_from_confusion(self.confmat), "confmat": self.last_confmat}

    def scalars(
        self, scores: dict[str, torch.Tensor], class_names: Sequence[str]
    ) -> dict[str, torch.Tensor]:
        """mIoU, mAcc, aAcc, FWIoU, mDice and IoU/<class>."""
        return {
            **{name: scores[name] for name in SUMMARY_METRICS},
            **per_class("IoU", scores["IoU"], class_names),
        }
