"""Boundary IoU: the band equals boundary-iou-api's mask_to_boundary (OpenCV), the metric a float64 reference."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
import torch

from src.metrics import BoundaryIoU, MetricConfigError
from src.metrics.boundary_iou import band_width
from src.metrics.morphology import boundary_band
from tests.helpers.label_maps import ABSENT, IGNORE, NUM_CLASSES, scenes


def mask_to_boundary(mask: np.ndarray, dilation: int) -> np.ndarray:
    """boundary-iou-api's mask_to_boundary with the dilation in pixels: the mask minus its erosion after zero padding."""
    height, width = mask.shape
    padded = cv2.copyMakeBorder(mask, 1, 1, 1, 1, cv2.BORDER_CONSTANT, value=0)
    eroded = cv2.erode(padded, np.ones((3, 3), dtype=np.uint8), iterations=dilation)
    return mask - eroded[1 : height + 1, 1 : width + 1]


def binary_masks(seed: int) -> list[np.ndarray]:
    """Random blobs of odd sizes, blobs touching the border, an empty and a full mask."""
    rng = np.random.default_rng(seed)
    masks = []
    for height, width in ((17, 23), (1, 9), (30, 11), (5, 5)):
        noise = (rng.random((height, width)) < 0.3).astype(np.uint8)
        masks.append(cv2.dilate(noise, np.ones((3, 3), np.uint8)))
        masks.append(noise)
    masks.append(np.zeros((12, 7), np.uint8))
    masks.append(np.ones((12, 7), np.uint8))
    return masks


@pytest.mark.parametrize("dilation", [1, 2, 3, 7])
def test_band_equals_mask_to_boundary(dilation: int) -> None:
    for mask in binary_masks(dilation):
        expected = mask_to_boundary(mask, dilation).astype(bool)
        labels = torch.from_numpy(mask.astype(np.int64)).unsqueeze(0)
        got = (boundary_band(labels, dilation) & (labels == 1))[0].numpy()
        assert np.array_equal(got, expected), (mask.shape, dilation)


def band_reference(mask: np.ndarray, d: int) -> np.ndarray:
    """Cheng et al.'s G_d ∩ G by its definition: mask pixels whose (2d+1)^2 window leaves the mask or the image."""
    height, width = mask.shape
    band = np.zeros_like(mask, dtype=bool)
    for y in range(height):
        for x in range(width):
            if not mask[y, x]:
                continue
            inside = d <= y < height - d and d <= x < width - d
            band[y, x] = not inside or not mask[y - d : y + d + 1, x - d : x + d + 1].all()
    return band


def reference_biou(pairs, ratio: float | None, pixels: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Per-class intersections and unions of the bands over valid pixels, summed over images (float64)."""
    inter, union = np.zeros(NUM_CLASSES), np.zeros(NUM_CLASSES)
    for pred, label in pairs:
        height, width = label.shape
        d = (
            pixels
            if pixels is not None
            else max(1, int(round(ratio * math.sqrt(height**2 + width**2))))
        )
        valid = label != IGNORE
        for c in range(NUM_CLASSES):
            pred_band = band_reference(pred == c, d)
            label_band = band_reference(label == c, d)  # ignored pixels are not-c
            inter[c] += (pred_band & label_band & valid).sum()
            union[c] += ((pred_band | label_band) & valid).sum()
    return inter, union


@pytest.mark.parametrize(("ratio", "pixels"), [(0.02, None), (0.1, None), (None, 2)])
def test_boundary_iou_matches_reference(ratio, pixels) -> None:
    pairs = scenes(12)
    metric = BoundaryIoU(NUM_CLASSES, IGNORE, dilation_ratio=ratio, dilation_px=pixels)
    for pred, label in pairs:  # each image at its own size
        metric.update(torch.from_numpy(pred), torch.from_numpy(label))
    scores = metric.compute()
    inter, union = reference_biou(pairs, ratio, pixels)
    assert metric.intersection.tolist() == inter.tolist()
    assert metric.union.tolist() == union.tolist()
    with np.errstate(invalid="ignore"):
        expected = inter / union
    assert np.isnan(expected[ABSENT]) and bool(scores["BIoU"][ABSENT].isnan())
    np.testing.assert_allclose(scores["BIoU"].numpy(), expected, rtol=1e-12)
    assert scores["mBIoU"].item() == pytest.approx(np.nanmean(expected), rel=1e-12)
    assert 0 < scores["mBIoU"].item() < 1


def test_batch_of_images_equals_one_by_one() -> None:
    pairs = [p for p in scenes(10) if p[0].shape == (17, 23)]
    one_by_one, batched = BoundaryIoU(NUM_CLASSES), BoundaryIoU(NUM_CLASSES)
    for pred, label in pairs:
        one_by_one.update(torch.from_numpy(pred), torch.from_numpy(label))
    batched.update(*(torch.from_numpy(np.stack(maps)) for maps in zip(*pairs, strict=True)))
    assert torch.equal(one_by_one.intersection, batched.intersection)
    assert torch.equal(one_by_one.union, batched.union)


def test_width_follows_the_diagonal() -> None:
    assert band_width(375, 500, 0.02, None) == round(0.02 * 625)  # VOC's 500x375: 12.5 -> 12
    assert band_width(3, 4, 0.02, None) == 1  # never below one pixel
    assert band_width(1024, 2048, 0.005, None) == round(0.005 * math.hypot(1024, 2048))
    assert band_width(375, 500, 0.02, 5) == 5


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"dilation_ratio": -0.02}, r"dilation_ratio=-0\.02: expected a positive number"),
        ({"dilation_ratio": 0}, r"dilation_ratio=0: expected a positive number"),
        ({"dilation_ratio": None, "dilation_px": 0}, r"dilation_px=0: expected a whole number"),
        ({"dilation_ratio": None, "dilation_px": 2.5}, r"dilation_px=2\.5"),
        ({"dilation_px": 3}, r"dilation_ratio=0\.02 and dilation_px=3: set exactly one"),
        ({"dilation_ratio": None}, r"set exactly one"),
    ],
)
def test_bad_options_name_the_key(kwargs, message) -> None:
    with pytest.raises(MetricConfigError, match=message):
        BoundaryIoU(NUM_CLASSES, **kwargs)
