"""Colour augmentations on uint8 RGB images, done with lookup tables (no float copy of the image)."""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from src.data.transforms import randint, uniform

# float64 as in the VOC loader this project started from, so its LUTs are reproduced exactly.
_LEVELS = np.arange(256, dtype=np.float64)


def _lut(table: np.ndarray) -> np.ndarray:
    """A float table over 0..255 -> the uint8 LUT cv2.LUT wants (rounded, clipped)."""
    return np.clip(np.rint(table), 0, 255).astype(np.uint8)


def apply_hsv_luts(
    image: np.ndarray, hue: np.ndarray | None, sat: np.ndarray | None, val: np.ndarray | None
) -> np.ndarray:
    """Map each HSV channel of an RGB uint8 image through a 256-entry LUT (None: unchanged)."""
    h, s, v = cv2.split(cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2HSV))
    h = h if hue is None else cv2.LUT(h, hue)
    s = s if sat is None else cv2.LUT(s, sat)
    v = v if val is None else cv2.LUT(v, val)
    return cv2.cvtColor(cv2.merge((h, s, v)), cv2.COLOR_HSV2RGB)


def hsv_jitter(
    image: np.ndarray, hue: float = 0.1, sat: float = 0.7, val: float = 0.3
) -> np.ndarray:
    """Scale OpenCV's H (mod 180), S and V by 1 + U(-1, 1) * (hue, sat, val).

    The colour jitter of the VOC loader this project started from.
    """
    r = [1.0 + uniform(-1.0, 1.0) * amount for amount in (hue, sat, val)]
    # That loader casts with astype (truncation), not rounding; keep its semantics.
    lut_hue = np.mod(_LEVELS * r[0], 180).astype(np.uint8)
    lut_sat = np.clip(_LEVELS * r[1], 0, 255).astype(np.uint8)
    lut_val = np.clip(_LEVELS * r[2], 0, 255).astype(np.uint8)
    return apply_hsv_luts(image, lut_hue, lut_sat, lut_val)


class PhotometricDistortion:
    """mmseg's PhotoMetricDistortion, each step with probability 1/2.

    Brightness (+U(-delta, delta)), contrast (x U(low, high)) either before or after the HSV steps
    (saturation x U(low, high), hue + U(-delta, delta) in OpenCV's 0..179 hue units).
    """

    def __init__(
        self,
        brightness_delta: int = 32,
        contrast_range: Sequence[float] = (0.5, 1.5),
        saturation_range: Sequence[float] = (0.5, 1.5),
        hue_delta: int = 18,
    ) -> None:
        self.brightness_delta = int(brightness_delta)
        self.contrast_range = (float(contrast_range[0]), float(contrast_range[1]))
        self.saturation_range = (float(saturation_range[0]), float(saturation_range[1]))
        self.hue_delta = int(hue_delta)

    def __call__(self, image: np.ndarray) -> np.ndarray:
        """Return a colour-distorted copy of an RGB uint8 image (H,W,3)."""
        table = _LEVELS.copy()
        if randint(0, 1):
            table = np.clip(table + uniform(-self.brightness_delta, self.brightness_delta), 0, 255)
        contrast_first = bool(randint(0, 1))
        contrast = uniform(*self.contrast_range) if randint(0, 1) else None
        if contrast is not None and contrast_first:
            table = np.clip(table * contrast, 0, 255)
        if not np.array_equal(table, _LEVELS):
            image = cv2.LUT(np.ascontiguousarray(image), _lut(table))
        sat = _lut(_LEVELS * uniform(*self.saturation_range)) if randint(0, 1) else None
        hue = None
        if randint(0, 1):
            shift = randint(-self.hue_delta, self.hue_delta)
            hue = np.mod(np.arange(256) + shift, 180).astype(np.uint8)
        if sat is not None or hue is not None:
            image = apply_hsv_luts(image, hue, sat, None)
        if contrast is not None and not contrast_first:
            image = cv2.LUT(np.ascontiguousarray(image), _lut(_LEVELS * contrast))
        return image
