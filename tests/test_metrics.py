"""The confusion-matrix metric against an independent numpy reference (`fast_hist`)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from src.metrics import SegmentationMetrics, scores_from_confusion


def fast_hist(label: np.ndarray, pred: np.ndarray, n: int) -> np.ndarray:
    """`fast_hist`'s confusion matrix: rows = label, columns = prediction, labels outside [0, n) dropped."""
    k = (label >= 0) & (label < n)
    return np.bincount(n * label[k].astype(int) + pred[k], minlength=n**2).reshape(n, n)


def reference_scores(hist: np.ndarray) -> dict[str, float]:
    """Long et al.'s pixel acc, mean acc, mean IU (nan-safe: classes with empty union left out), FW IU."""
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.diag(hist) / (hist.sum(1) + hist.sum(0) - np.diag(hist))
        acc = np.diag(hist) / hist.sum(1)
    freq = hist.sum(1) / hist.sum()
    return {
        "aAcc": np.diag(hist).sum() / hist.sum(),
        "mAcc": np.nanmean(acc),
        "mIoU": np.nanmean(iou),
        "FWIoU": np.nansum(freq * iou),
    }


def random_batch(seed: int, num_classes: int, absent: int, shape=(3, 17, 23)):
    rng = np.random.default_rng(seed)
    label = rng.integers(0, num_classes, shape)
    pred = rng.integers(0, num_classes, shape)
    label[label == absent] = 0  # a class absent from the labels...
    pred[pred == absent] = 1  # ...and from the predictions: its union is empty
    label[rng.random(shape) < 0.2] = 255
    return label, pred


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_scores_match_numpy_reference(seed: int) -> None:
    num_classes, absent = 7, 4
    metric = SegmentationMetrics(num_classes, ignore_index=255)
    hist = np.zeros((num_classes, num_classes), dtype=np.int64)
    for batch in range(3):
        label, pred = random_batch(seed * 10 + batch, num_classes, absent)
        metric.update(torch.from_numpy(pred), torch.from_numpy(label))
        hist += fast_hist(label, pred, num_classes)
    scores = metric.compute()
    assert np.array_equal(metric.confmat.numpy(), hist)
    expected = reference_scores(hist)
    for name, value in expected.items():
        assert scores[name].item() == pytest.approx(value, rel=1e-12), name
    assert torch.isnan(scores["IoU"][absent])
    # left out of the mean, not counted as 0 or 1
    present = [c for c in range(num_classes) if c != absent]
    assert scores["mIoU"].item() == pytest.approx(scores["IoU"][present].mean().item(), rel=1e-12)


def test_prediction_only_class_counts_with_zero_iou() -> None:
    label = torch.tensor([[0, 0, 1, 1]])
    pred = torch.tensor([[0, 2, 1, 1]])
    metric = SegmentationMetrics(3)
    metric.update(pred, label)
    scores = metric.compute()
    assert scores["IoU"].tolist() == pytest.approx([0.5, 1.0, 0.0])
    assert scores["mIoU"].item() == pytest.approx(0.5)


def test_all_ignored_gives_nan_not_crash() -> None:
    metric = SegmentationMetrics(3)
    metric.update(torch.zeros(2, 4, 4, dtype=torch.long), torch.full((2, 4, 4), 255))
    scores = metric.compute()
    assert metric.confmat.sum() == 0
    assert torch.isnan(scores["mIoU"]) and torch.isnan(scores["aAcc"])


def test_shape_mismatch_is_an_error() -> None:
    with pytest.raises(ValueError, match="differs from target shape"):
        SegmentationMetrics(3).update(torch.zeros(1, 4, 4), torch.zeros(1, 5, 4))


def test_dice_from_confusion() -> None:
    hist = torch.tensor([[3, 1], [2, 4]])
    scores = scores_from_confusion(hist)
    assert scores["Dice"].tolist() == pytest.approx([2 * 3 / (4 + 5), 2 * 4 / (6 + 5)])
