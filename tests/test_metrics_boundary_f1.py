"""Boundary F-score (Csurka et al. 2013) against a float64 reference written with numpy loops."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from src.metrics import BoundaryFScore, MetricConfigError
from src.metrics.morphology import dilate_disk
from tests.helpers.label_maps import ABSENT, IGNORE, NUM_CLASSES, scenes


def contour(labels: np.ndarray, cls: int) -> np.ndarray:
    """Pixels of `cls` with a 4-neighbour inside the image holding another value."""
    height, width = labels.shape
    out = np.zeros(labels.shape, dtype=bool)
    for y in range(height):
        for x in range(width):
            if labels[y, x] != cls:
                continue
            neighbours = ((y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1))
            out[y, x] = any(
                0 <= ny < height and 0 <= nx < width and labels[ny, nx] != cls
                for ny, nx in neighbours
            )
    return out


def matched(points: np.ndarray, others: np.ndarray, theta: float) -> int:
    """How many of `points` lie within Euclidean distance theta of one of `others` (both (K, 2))."""
    if len(points) == 0 or len(others) == 0:
        return 0
    distances = np.sqrt(((points[:, None, :] - others[None, :, :]) ** 2).sum(-1))
    return int((distances.min(1) <= theta).sum())


def image_counts(pred, label, theta) -> np.ndarray:
    """(C, 4): matched predicted, predicted, matched label, label contour pixels of one image."""
    valid = label != IGNORE
    counts = np.zeros((NUM_CLASSES, 4))
    for c in range(NUM_CLASSES):
        pred_points = np.argwhere(contour(pred, c))
        label_points = np.argwhere(contour(label, c))  # ignored pixels are another value
        scored = np.argwhere(contour(pred, c) & valid)
        counts[c] = (
            matched(scored, label_points, theta),
            len(scored),
            matched(label_points, pred_points, theta),
            len(label_points),
        )
    return counts


def f1(counts: np.ndarray) -> float:
    """F1 of one (4,) count row: NaN without contours, 0 when one side has none."""
    mp, npred, mt, nt = counts
    if npred + nt == 0:
        return math.nan
    precision = mp / npred if npred else 0.0
    recall = mt / nt if nt else 0.0
    return 2 * precision * recall / (precision + recall) if precision + recall else 0.0


def reference(pairs, theta_of) -> dict[str, np.ndarray | float]:
    """mBF (per image mean over classes, then over images), BF per class, pooled F1 per class."""
    per_image = [image_counts(p, lab, theta_of(*lab.shape)) for p, lab in pairs]
    scores = np.array([[f1(row) for row in counts] for counts in per_image])  # (N, C)
    image_means = [np.nanmean(row) for row in scores if not np.isnan(row).all()]
    pooled = np.array([f1(row) for row in sum(per_image)])
    with np.errstate(invalid="ignore"):
        class_bf = np.nansum(scores, 0) / (~np.isnan(scores)).sum(0)
    return {
        "mBF": np.mean(image_means),
        "BF": class_bf,
        "BF_pooled": pooled,
        "counts": sum(per_image),
    }


@pytest.mark.parametrize(
    ("options", "theta_of"),
    [
        ({}, lambda h, w: 2.0),
        ({"tolerance_px": 0}, lambda h, w: 0.0),
        ({"tolerance_px": 1.5}, lambda h, w: 1.5),
        ({"tolerance_px": None, "tolerance_ratio": 0.1}, lambda h, w: 0.1 * math.hypot(h, w)),
    ],
)
def test_boundary_f1_matches_reference(options, theta_of) -> None:
    pairs = scenes(10, offset=3)
    # one class wall to wall: no contour, left out
    pairs.append((np.full((7, 9), 2), np.full((7, 9), 2)))
    metric = BoundaryFScore(NUM_CLASSES, IGNORE, **options)
    for pred, label in pairs:
        metric.update(torch.from_numpy(pred), torch.from_numpy(label))
    scores = metric.compute()
    expected = reference(pairs, theta_of)
    counts = torch.stack(
        [metric.matched_pred, metric.pred_points, metric.matched_target, metric.target_points], 1
    )
    assert counts.tolist() == expected["counts"].tolist()
    assert metric.images.item() == len(pairs) - 1
    # F1s are summed at multiples of 2^-32
    assert scores["mBF"].item() == pytest.approx(expected["mBF"], abs=1e-9)
    np.testing.assert_allclose(scores["BF"].numpy(), expected["BF"], atol=1e-9)
    np.testing.assert_allclose(scores["BF_pooled"].numpy(), expected["BF_pooled"], rtol=1e-12)
    assert scores["mBF_pooled"].item() == pytest.approx(
        np.nanmean(expected["BF_pooled"]), rel=1e-12
    )
    assert bool(scores["BF"][ABSENT].isnan()) and bool(scores["BF_pooled"][ABSENT].isnan())
    assert 0 < scores["mBF"].item() < 1


def test_tolerance_widens_matches() -> None:
    # a vertical edge predicted 2 px to the right: matched within 2 px, not within 1
    label = np.zeros((8, 12), dtype=np.int64)
    label[:, 6:] = 1
    pred = np.roll(label, 2, axis=1)
    pred[:, :2] = 0
    scores = {}
    for theta in (1, 2):
        metric = BoundaryFScore(2, tolerance_px=theta)
        metric.update(torch.from_numpy(pred), torch.from_numpy(label))
        scores[theta] = metric.compute()["mBF"].item()
    assert scores[1] == 0.0 and scores[2] == 1.0


@pytest.mark.parametrize("radius", [0.0, 1.0, 1.5, 2.0, math.sqrt(8), 3.7])
def test_disk_dilation_is_euclidean(radius: float) -> None:
    rng = np.random.default_rng(int(radius * 10))
    masks = rng.random((2, 3, 11, 14)) < 0.04
    got = dilate_disk(torch.from_numpy(masks), radius).numpy()
    grid = np.stack(np.mgrid[:11, :14], -1).reshape(-1, 2)
    for index in np.ndindex(2, 3):
        points = np.argwhere(masks[index])
        expected = np.zeros(11 * 14, dtype=bool)
        if len(points):
            distances = np.sqrt(((grid[:, None] - points[None]) ** 2).sum(-1)).min(1)
            expected = distances <= radius
        assert np.array_equal(got[index].reshape(-1), expected), index


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"tolerance_px": -1}, r"tolerance_px=-1: expected a number >= 0"),
        ({"tolerance_px": None, "tolerance_ratio": -0.01}, r"tolerance_ratio=-0\.01"),
        (
            {"tolerance_ratio": 0.0075},
            r"tolerance_px=2\.0 and tolerance_ratio=0\.0075: set exactly one",
        ),
    ],
)
def test_bad_options_name_the_key(kwargs, message) -> None:
    with pytest.raises(MetricConfigError, match=message):
        BoundaryFScore(NUM_CLASSES, **kwargs)
