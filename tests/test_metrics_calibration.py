"""ECE / MCE and the reliability bins against a float64 reference written with Python loops."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from src.metrics import CalibrationError, MetricConfigError
from tests.helpers.label_maps import IGNORE, NUM_CLASSES, scenes


def probabilities(label: np.ndarray, seed: int) -> np.ndarray:
    """float32 (C, H, W) softmax of random logits; some pixels exactly one-hot (confidence 1.0), some
    exactly at bin edges (0.5, 0.25)."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 2, (NUM_CLASSES, *label.shape)).astype(np.float32)
    probs = torch.from_numpy(logits).softmax(0).numpy()
    flat = probs.reshape(NUM_CLASSES, -1)
    pixels = flat.shape[1]
    for column in rng.choice(pixels, size=max(1, pixels // 5), replace=False):
        kind = rng.integers(0, 3)
        flat[:, column] = 0.0
        top = rng.integers(0, NUM_CLASSES)
        if kind == 0:
            flat[top, column] = 1.0
        else:
            edge = np.float32(0.5 if kind == 1 else 0.25)
            flat[top, column] = edge  # the rest spread below the top
            flat[(top + 1) % NUM_CLASSES, column] = np.float32(1.0) - edge
            if kind == 2:
                flat[(top + 1) % NUM_CLASSES, column] = edge
                flat[(top + 2) % NUM_CLASSES, column] = edge
                flat[(top + 3) % NUM_CLASSES, column] = np.float32(1.0) - 3 * edge
    return probs


def reference(pairs, bins: int) -> dict[str, float | list]:
    """Guo et al.'s ECE and MCE by their definition: bins [k/n, (k+1)/n), the last one closed."""
    count, correct, confidence = [0] * bins, [0] * bins, [0.0] * bins
    for probs, label in pairs:
        for y, x in np.ndindex(label.shape):
            if label[y, x] == IGNORE:
                continue
            column = probs[:, y, x]
            top = float(column.max())
            predicted = int(np.argmax(column))
            k = next(k for k in range(bins) if k / bins <= top < (k + 1) / bins or k == bins - 1)
            count[k] += 1
            correct[k] += int(predicted == label[y, x])
            confidence[k] += top
    total = sum(count)
    gaps = [
        abs(correct[k] / count[k] - confidence[k] / count[k]) if count[k] else None
        for k in range(bins)
    ]
    return {
        "ECE": sum(count[k] / total * gaps[k] for k in range(bins) if count[k]),
        "MCE": max(g for g in gaps if g is not None),
        "count": count,
    }


@pytest.mark.parametrize("bins", [15, 10, 4, 1])
def test_calibration_matches_reference(bins: int) -> None:
    pairs = [(probabilities(label, i), label) for i, (_, label) in enumerate(scenes(8))]
    metric = CalibrationError(NUM_CLASSES, IGNORE, bins=bins)
    for probs, label in pairs:
        metric.update(torch.from_numpy(probs), torch.from_numpy(label))
    scores = metric.compute()
    expected = reference(pairs, bins)
    # (torchmetrics squeezes a one-bin result to 0-d)
    assert scores["bin_pixels"].reshape(-1).tolist() == expected["count"]
    assert scores["ECE"].item() == pytest.approx(expected["ECE"], rel=1e-12)
    assert scores["MCE"].item() == pytest.approx(expected["MCE"], rel=1e-12)
    assert scores["bin_edges"].reshape(-1).tolist() == pytest.approx(
        [k / bins for k in range(bins + 1)]
    )
    assert 0 < scores["ECE"].item() <= scores["MCE"].item()


def test_confidence_one_lands_in_the_last_bin_and_edges_open_upward() -> None:
    probs = torch.zeros(1, 2, 1, 4)
    probs[0, 0] = torch.tensor([1.0, 0.5, 0.75, 0.6])
    probs[0, 1] = 1 - probs[0, 0]
    metric = CalibrationError(2, bins=4)
    metric.update(probs, torch.tensor([[[0, 0, 1, 0]]]))
    scores = metric.compute()
    # 1.0 -> bin 3 (closed), 0.5 -> bin 2 ([0.5, 0.75)), 0.75 -> bin 3, 0.6 -> bin 2
    assert scores["bin_pixels"].tolist() == [0, 0, 2, 2]
    assert scores["bin_accuracy"][2].item() == 1.0 and scores["bin_accuracy"][3].item() == 0.5
    assert math.isnan(scores["bin_accuracy"][0].item())


def test_batched_update_and_all_ignored() -> None:
    label = np.stack([scenes(4)[i][1] for i in (0,)] * 2)
    probs = np.stack([probabilities(label[0], 1), probabilities(label[1], 2)])
    batched, single = CalibrationError(NUM_CLASSES), CalibrationError(NUM_CLASSES)
    batched.update(torch.from_numpy(probs), torch.from_numpy(label))
    for index in range(2):
        single.update(torch.from_numpy(probs[index]), torch.from_numpy(label[index]))
    assert torch.equal(batched.pixels, single.pixels) and torch.equal(
        batched.confidence, single.confidence
    )
    empty = CalibrationError(NUM_CLASSES)
    empty.update(torch.from_numpy(probs), torch.full(label.shape, IGNORE))
    assert math.isnan(empty.compute()["ECE"].item())


@pytest.mark.parametrize("bins", [0, -3, 2.5, True])
def test_bad_bins_name_the_key(bins) -> None:
    with pytest.raises(
        MetricConfigError, match=rf"bins={bins!r}: expected a whole number of bins >= 1"
    ):
        CalibrationError(NUM_CLASSES, bins=bins)
