"""The reliability diagram of `CalibrationError`'s bins as an RGB image (numpy/OpenCV, no matplotlib).

Bars: each bin's accuracy over its confidence range; a red outline: the bin's mean confidence (the
gap to the bar is the bin's calibration error); the diagonal: perfect calibration. Below, the share
of pixels in each bin (a log scale would hide how few pixels the low bins hold, so it is linear).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import cv2
import numpy as np

BAR_RGB = (49, 130, 189)
GAP_RGB = (222, 45, 38)
AXIS_RGB = (0, 0, 0)
GRID_RGB = (220, 220, 220)
WHITE = (255, 255, 255)
FONT = cv2.FONT_HERSHEY_SIMPLEX


def reliability_bins(results: Mapping[str, Any]) -> dict[str, list[float | None]]:
    """CalibrationError's results as plain lists (NaN: None) for metrics.json and the report."""

    def plain(values: Any) -> list[float | None]:
        flat = np.asarray(
            values.cpu() if hasattr(values, "cpu") else values, dtype=np.float64
        ).reshape(-1)
        return [None if math.isnan(v) else float(v) for v in flat]

    return {
        "edges": plain(results["bin_edges"]),
        "pixels": plain(results["bin_pixels"]),
        "accuracy": plain(results["bin_accuracy"]),
        "confidence": plain(results["bin_confidence"]),
    }


def _text(canvas: np.ndarray, text: str, origin: tuple[int, int], scale: float = 0.4) -> None:
    cv2.putText(canvas, text, origin, FONT, scale, AXIS_RGB, 1, cv2.LINE_AA)


def reliability_diagram(
    bins: Mapping[str, list[float | None]], ece: float | None, mce: float | None, size: int = 360
) -> np.ndarray:
    """Accuracy per confidence bin against the diagonal, pixel shares below; RGB uint8."""
    margin, histogram_h, title_h = 44, size // 4, 22
    height = title_h + size + 12 + histogram_h + margin
    width = margin + size + 16
    canvas = np.full((height, width, 3), WHITE, np.uint8)
    top, left = title_h, margin

    def x_of(value: float) -> int:
        return left + round(value * size)

    def y_of(value: float) -> int:
        return top + size - round(value * size)

    for tick in np.linspace(0, 1, 6):
        cv2.line(canvas, (x_of(tick), top), (x_of(tick), top + size), GRID_RGB, 1)
        cv2.line(canvas, (left, y_of(tick)), (left + size, y_of(tick)), GRID_RGB, 1)
        _text(canvas, f"{tick:.1f}", (x_of(tick) - 8, top + size + histogram_h + 28), 0.35)
        _text(canvas, f"{tick:.1f}", (4, y_of(tick) + 4), 0.35)
    edges, pixels = bins["edges"], [p or 0.0 for p in bins["pixels"]]
    total = sum(pixels) or 1.0
    hist_top = top + size + 12
    for k, (accuracy, confidence) in enumerate(
        zip(bins["accuracy"], bins["confidence"], strict=True)
    ):
        x0, x1 = x_of(edges[k]) + 1, x_of(edges[k + 1]) - 1
        share = pixels[k] / total
        cv2.rectangle(
            canvas,
            (x0, hist_top + histogram_h - round(share * histogram_h)),
            (x1, hist_top + histogram_h),
            BAR_RGB,
            -1,
        )
        if accuracy is None:
            continue
        cv2.rectangle(canvas, (x0, y_of(accuracy)), (x1, y_of(0)), BAR_RGB, -1)
        cv2.rectangle(canvas, (x0, y_of(confidence)), (x1, y_of(0)), GAP_RGB, 1)
    cv2.line(canvas, (x_of(0), y_of(0)), (x_of(1), y_of(1)), AXIS_RGB, 1, cv2.LINE_AA)
    cv2.rectangle(canvas, (left, top), (left + size, top + size), AXIS_RGB, 1)
    cv2.rectangle(canvas, (left, hist_top), (left + size, hist_top + histogram_h), AXIS_RGB, 1)
    scores = " ".join(
        f"{name} {value:.4f}" for name, value in (("ECE", ece), ("MCE", mce)) if value is not None
    )
    _text(canvas, f"accuracy per confidence bin   {scores}", (left, 15))
    _text(canvas, "share of pixels", (left + 4, hist_top + 14), 0.35)
    _text(canvas, "confidence (top softmax probability)", (left + size // 5, height - 6))
    return canvas
