"""The configurable metric set: one metric per file, every state reduced across processes exactly.

confusion (mIoU family), boundary_iou (Boundary IoU), boundary_f1 (boundary F-score), calibration
(ECE/MCE, reliability diagram), per_image (per-image table, mIoU_image); MetricSet feeds them all.
"""

from src.metrics.boundary_f1 import BoundaryFScore
from src.metrics.boundary_iou import BoundaryIoU
from src.metrics.calibration import CalibrationError
from src.metrics.common import MetricConfigError, SegmentationMetric
from src.metrics.confusion import (
    SUMMARY_METRICS,
    SegmentationMetrics,
    confusion_matrix,
    scores_from_confusion,
)
from src.metrics.metric_set import MetricSet
from src.metrics.per_image import PerImageScores

__all__ = [
    "SUMMARY_METRICS",
    "BoundaryFScore",
    "BoundaryIoU",
    "CalibrationError",
    "MetricConfigError",
    "MetricSet",
    "PerImageScores",
    "SegmentationMetric",
    "SegmentationMetrics",
    "confusion_matrix",
    "scores_from_confusion",
]
