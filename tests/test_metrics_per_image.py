"""Per-image scores and mIoU_image against a numpy reference; the metric set's plumbing."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from src.metrics import (
    BoundaryIoU,
    CalibrationError,
    MetricSet,
    PerImageScores,
    SegmentationMetrics,
)
from tests.helpers.label_maps import ABSENT, IGNORE, NUM_CLASSES, scenes


def reference_row(pred: np.ndarray, label: np.ndarray) -> dict:
    """One image's IoU per class over valid pixels (NaN: in neither label nor prediction), mIoU, accuracy."""
    valid = label != IGNORE
    iou = np.full(NUM_CLASSES, math.nan)
    for c in range(NUM_CLASSES):
        union = ((pred == c) & valid | (label == c)).sum()
        if union:
            iou[c] = ((pred == c) & (label == c)).sum() / union
    return {
        "IoU": iou,
        "mIoU": np.nanmean(iou) if not np.isnan(iou).all() else math.nan,
        "pixel_accuracy": (pred == label)[valid].sum() / valid.sum() if valid.any() else math.nan,
        "valid": int(valid.sum()),
    }


def test_per_image_rows_match_reference_sorted_by_name() -> None:
    pairs = scenes(9)
    names = [f"img_{(7 * i) % 9:02d}" for i in range(len(pairs))]  # not in update order
    # nothing valid: an undefined row
    pairs.append((np.zeros((5, 6), np.int64), np.full((5, 6), IGNORE)))
    names.append("all_ignored")
    metric = PerImageScores(NUM_CLASSES, IGNORE)
    for (pred, label), name in zip(pairs, names, strict=True):
        metric.update(torch.from_numpy(pred), torch.from_numpy(label), [name])
    scores = metric.compute()
    assert scores["names"] == sorted(names)
    rows = {name: reference_row(*pair) for name, pair in zip(names, pairs, strict=True)}
    for index, name in enumerate(scores["names"]):
        expected = rows[name]
        np.testing.assert_allclose(scores["IoU"][index].numpy(), expected["IoU"], rtol=1e-12)
        for key in ("mIoU", "pixel_accuracy"):
            got = scores[key][index].item()
            assert (math.isnan(got) and math.isnan(expected[key])) or got == pytest.approx(
                expected[key], rel=1e-12
            )
        assert scores["valid"][index].item() == expected["valid"]
    assert bool(scores["IoU"][:, ABSENT].isnan().all())
    defined = [row["mIoU"] for row in rows.values() if not math.isnan(row["mIoU"])]
    assert len(defined) == len(pairs) - 1
    assert scores["mIoU_image"].item() == pytest.approx(np.mean(defined), rel=1e-12)


def test_mean_of_image_miou_differs_from_dataset_miou() -> None:
    # image 1: a 2-pixel object missed; image 2: a large object found. The dataset's mIoU hardly
    # sees the miss, the mean over images halves that class's score in image 1.
    label1, pred1 = np.zeros((10, 10), np.int64), np.zeros((10, 10), np.int64)
    label1[0, :2] = 1
    label2 = np.zeros((10, 10), np.int64)
    label2[2:8, 2:8] = 1
    pairs = [(pred1, label1), (label2.copy(), label2)]
    per_image, dataset = PerImageScores(2), SegmentationMetrics(2)
    for index, (pred, label) in enumerate(pairs):
        per_image.update(torch.from_numpy(pred), torch.from_numpy(label), [str(index)])
        dataset.update(torch.from_numpy(pred), torch.from_numpy(label))
    image_mean = per_image.compute()["mIoU_image"].item()
    assert image_mean == pytest.approx((98 / 100 + 0.0) / 2 / 2 + 1.0 / 2)
    # summed over both images: background 162 / 164, the object 36 / 38
    assert dataset.compute()["mIoU"].item() == pytest.approx((162 / 164 + 36 / 38) / 2)


def test_names_survive_unicode_and_batches() -> None:
    pred, label = scenes(1)[0]
    metric = PerImageScores(NUM_CLASSES)
    batch = torch.from_numpy(np.stack([pred, pred])), torch.from_numpy(np.stack([label, label]))
    metric.update(*batch, ["été_01", "b"])
    assert metric.compute()["names"] == ["b", "été_01"]
    with pytest.raises(ValueError, match="1 names for 2 images"):
        metric.update(*batch, ["x"])


def test_metric_set_feeds_each_metric_what_it_reads() -> None:
    pairs = scenes(4)
    metrics = MetricSet(
        {
            "miou": SegmentationMetrics(NUM_CLASSES),
            "boundary_iou": BoundaryIoU(NUM_CLASSES),
            "calibration": CalibrationError(NUM_CLASSES),
            "per_image": PerImageScores(NUM_CLASSES),
        }
    )
    assert metrics.needs("probs") and metrics.needs("names")
    alone = {"miou": SegmentationMetrics(NUM_CLASSES), "boundary_iou": BoundaryIoU(NUM_CLASSES)}
    assert not MetricSet(alone).needs("probs")
    for index, (pred, label) in enumerate(pairs):
        probs = (
            torch.nn.functional.one_hot(torch.from_numpy(pred), NUM_CLASSES)
            .permute(2, 0, 1)
            .float()
        )
        metrics.update(torch.from_numpy(pred), torch.from_numpy(label), probs, [str(index)])
        for metric in alone.values():
            metric.update(torch.from_numpy(pred), torch.from_numpy(label))
    results = metrics.compute()
    scalars = metrics.scalars(results, [f"c{i}" for i in range(NUM_CLASSES)])
    assert scalars["mIoU"].item() == alone["miou"].compute()["mIoU"].item()
    assert scalars["mBIoU"].item() == alone["boundary_iou"].compute()["mBIoU"].item()
    assert {"IoU/c0", "BIoU/c3", "ECE", "MCE", "mIoU_image"} <= set(scalars)
    # one-hot probabilities: confidence 1, so ECE = 1 - accuracy
    assert scalars["ECE"].item() == pytest.approx(1 - results["miou"]["aAcc"].item(), rel=1e-12)
    with pytest.raises(ValueError, match=r"metric calibration needs \['probs'\]"):
        metrics.update(torch.from_numpy(pred), torch.from_numpy(label), None, ["x"])
    metrics.reset()
    assert metrics.metrics["miou"].confmat.sum() == 0


def padded_batch(pairs, ignore: int = IGNORE):
    """pad_collate's layout: images bottom/right-padded with ignore_index to the largest size."""
    height = max(label.shape[0] for _, label in pairs)
    width = max(label.shape[1] for _, label in pairs)
    pred = torch.zeros(len(pairs), height, width, dtype=torch.long)
    target = torch.full((len(pairs), height, width), ignore, dtype=torch.long)
    probs = torch.zeros(len(pairs), NUM_CLASSES, height, width)
    for index, (p, label) in enumerate(pairs):
        h, w = label.shape
        pred[index, :h, :w] = torch.from_numpy(p)
        target[index, :h, :w] = torch.from_numpy(label)
        probs[index, :, :h, :w] = probability_maps(p)
    return pred, target, probs, [tuple(label.shape) for _, label in pairs]


def probability_maps(pred: np.ndarray) -> torch.Tensor:
    """Softmax probabilities (C, H, W) whose argmax is `pred`."""
    logits = torch.nn.functional.one_hot(torch.from_numpy(pred), NUM_CLASSES).permute(2, 0, 1) * 2.0
    return (logits + 0.1 * torch.arange(NUM_CLASSES).view(-1, 1, 1)).softmax(0)


def every_metric() -> MetricSet:
    return MetricSet(
        {
            "miou": SegmentationMetrics(NUM_CLASSES),
            "boundary_iou": BoundaryIoU(NUM_CLASSES),
            "calibration": CalibrationError(NUM_CLASSES),
            "per_image": PerImageScores(NUM_CLASSES),
        }
    )


def test_padded_batch_scores_each_image_at_its_own_size() -> None:
    pairs = scenes(5)  # five sizes: the batch is padded to 21 x 31
    pred, target, probs, sizes = padded_batch(pairs)
    batched, one_by_one = every_metric(), every_metric()
    names = [str(i) for i in range(len(pairs))]
    batched.update_padded(pred, target, sizes, probs, names)
    for index, (p, label) in enumerate(pairs):
        one_by_one.update(
            torch.from_numpy(p)[None],
            torch.from_numpy(label)[None],
            probability_maps(p)[None],
            [str(index)],
        )
    got, expected = batched.compute(), one_by_one.compute()
    for name in ("miou", "boundary_iou", "calibration", "per_image"):
        for key, value in expected[name].items():
            if isinstance(value, torch.Tensor):
                assert torch.allclose(got[name][key], value, equal_nan=True), (name, key)
            else:
                assert got[name][key] == value
    # the band at the padding's edge is not the image frame: without sizes BIoU would differ
    unsized = every_metric()
    unsized.update_padded(pred, target, None, probs, names)
    assert not torch.equal(unsized.compute()["boundary_iou"]["BIoU"], got["boundary_iou"]["BIoU"])


def test_padding_safe_metrics_take_the_batch_in_one_update(monkeypatch) -> None:
    pred, target, probs, sizes = padded_batch(scenes(5))
    metrics = MetricSet(
        {"miou": SegmentationMetrics(NUM_CLASSES), "calibration": CalibrationError(NUM_CLASSES)}
    )
    calls = []
    for metric in metrics.metrics.values():
        original = metric.update
        monkeypatch.setattr(
            metric, "update", lambda *a, _o=original, **k: (calls.append(1), _o(*a, **k))
        )
    metrics.update_padded(pred, target, sizes, probs, None)
    assert len(calls) == 2  # one call each, however many images
