"""Top-label calibration of per-pixel predictions: ECE and MCE (Guo et al., ICML 2017; Naeini et al., AAAI 2015).

Over valid pixels, the confidence is the top softmax probability and the pixel is correct when its
argmax equals the label. Bins are equal-width, bin k = [k/n, (k+1)/n), the last one closed, so a
confidence of exactly 1.0 lands in the last bin (torchmetrics' CalibrationError puts it in a hidden
extra bin, torchmetrics #3510, and stores every pixel). Here each bin keeps three float64 sums
(pixels, correct pixels, confidence), reduced across processes by summation:

    ECE = sum_k |correct_k - confidence_k| / pixels      MCE = max_k |correct_k - confidence_k| / pixels_k

over non-empty bins. A float32 confidence times n is exact in float64, so the bin of every pixel is
the exact one; float32 confidences summed in float64 lose nothing while a bin holds fewer than about
2^25 pixels, so the sums (and DDP's) do not depend on the order.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from src.metrics.common import MetricConfigError, SegmentationMetric, nan_divide

SUMS = ("pixels", "correct", "confidence")


def confidence_bins(confidence: Tensor, bins: int) -> Tensor:
    """Bin index of each confidence: floor(c * n), with 1.0 (and rounding above it) in the last bin."""
    return torch.floor(confidence.double() * bins).clamp(0, bins - 1).long()


class CalibrationError(SegmentationMetric):
    """Expected and maximum calibration error over valid pixels, and the reliability diagram's bins."""

    inputs = ("probs", "target")
    padding_safe = True
    higher_is_better = False

    def __init__(self, num_classes: int, ignore_index: int = 255, bins: int = 15) -> None:
        super().__init__()
        if isinstance(bins, bool) or not isinstance(bins, int) or bins < 1:
            raise MetricConfigError(f"bins={bins!r}: expected a whole number of bins >= 1")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.bins = bins
        for name in SUMS:
            self.add_state(
                name, default=torch.zeros(bins, dtype=torch.float64), dist_reduce_fx="sum"
            )

    def update(self, probs: Tensor, target: Tensor) -> None:
        """Add softmax probabilities (N, C, H, W) and labels (N, H, W); (C, H, W) and (H, W) are one image."""
        if probs.dim() == 3:
            probs, target = probs.unsqueeze(0), target.unsqueeze(0)
        if probs.dim() != 4 or probs.shape[:1] + probs.shape[2:] != target.shape:
            raise ValueError(
                f"probabilities {tuple(probs.shape)} and labels {tuple(target.shape)}: "
                "expected (N, C, H, W) and (N, H, W)"
            )
        confidence, pred = probs.max(1)
        target = target.long()
        valid = target != self.ignore_index
        confidence = confidence[valid].double()
        correct = (pred[valid] == target[valid]).double()
        index = confidence_bins(confidence, self.bins)
        self.pixels += torch.bincount(index, minlength=self.bins).double()
        # scatter_add_, not bincount(weights=...): the latter has no deterministic CUDA kernel
        self.correct.scatter_add_(0, index, correct)
        self.confidence.scatter_add_(0, index, confidence)

    def compute(self) -> dict[str, Tensor]:
        """ECE, MCE (NaN without valid pixels) and per bin: edges, pixels, accuracy, mean confidence."""
        gap = (self.correct - self.confidence).abs()
        filled = self.pixels > 0
        total = self.pixels.sum()
        undefined = torch.tensor(float("nan"), dtype=torch.float64, device=gap.device)
        return {
            "ECE": gap.sum() / total if total > 0 else undefined,
            "MCE": (gap[filled] / self.pixels[filled]).max() if total > 0 else undefined,
            "bin_edges": torch.linspace(0, 1, self.bins + 1, dtype=torch.float64),
            "bin_pixels": self.pixels.clone(),
            "bin_accuracy": nan_divide(self.correct, self.pixels),
            "bin_confidence": nan_divide(self.confidence, self.pixels),
        }

    def scalars(self, scores: dict[str, Tensor], class_names: Sequence[str]) -> dict[str, Tensor]:
        """ECE and MCE."""
        return {"ECE": scores["ECE"], "MCE": scores["MCE"]}
