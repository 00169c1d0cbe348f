"""How far colour alone gets on the embedded dataset: a per-pixel quadratic-RGB classifier's val mIoU.

    python scripts/colour_baseline.py [--num-train 400] [--num-val 100] [--pixels 300000]

Renders the embedded dataset in memory (the generator and parameters `data=synthetic` uses), fits a
multinomial logistic regression on each pixel's RGB and its second-order terms (r^2, rg, ...) to
a random subset of the labelled train pixels, and prints its mIoU over every labelled val pixel.
docs/data.md's claim that colour does not identify a class rests on this figure staying low.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from src.data.synthetic import DEFAULT_SPEC, IGNORE_INDEX, SyntheticSpec, render_sample  # noqa: E402
from src.metrics import confusion_matrix, scores_from_confusion  # noqa: E402


def quadratic_features(rgb: np.ndarray) -> torch.Tensor:
    """`(P, 3)` uint8 colours -> `(P, 9)` float features: r, g, b and the six second-order products."""
    x = torch.from_numpy(rgb.astype(np.float32) / 255.0)
    r, g, b = x.unbind(1)
    return torch.stack([r, g, b, r * r, g * g, b * b, r * g, r * b, g * b], dim=1)


def labelled_pixels(spec: SyntheticSpec, split: str, count: int) -> tuple[np.ndarray, np.ndarray]:
    """Colours `(P, 3)` and labels `(P,)` of every pixel not equal to the ignore label in a split."""
    colours, labels = [], []
    for index in range(count):
        image, mask = render_sample(spec, split, index)
        keep = mask != IGNORE_INDEX
        colours.append(image[keep])
        labels.append(mask[keep])
    return np.concatenate(colours), np.concatenate(labels)


def fit_softmax(features: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.nn.Linear:
    """Multinomial logistic regression by L-BFGS (a convex fit: the optimum, not a training run)."""
    classifier = torch.nn.Linear(features.shape[1], num_classes)
    optimiser = torch.optim.LBFGS(classifier.parameters(), max_iter=200, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimiser.zero_grad()
        loss = torch.nn.functional.cross_entropy(classifier(features), labels)
        loss.backward()
        return loss

    optimiser.step(closure)
    return classifier


def mean_iou(predicted: np.ndarray, labels: np.ndarray, num_classes: int) -> float:
    """The val mIoU seglab reports (src/metrics.py) of per-pixel predictions."""
    matrix = confusion_matrix(torch.from_numpy(predicted), torch.from_numpy(labels), num_classes, IGNORE_INDEX)
    return float(scores_from_confusion(matrix)["mIoU"])


def colour_baseline_miou(spec: SyntheticSpec, num_classes: int, pixels: int, seed: int = 0) -> float:
    """Fit the quadratic-RGB classifier on `pixels` train pixels of `spec`; its mIoU on all val pixels."""
    train_rgb, train_labels = labelled_pixels(spec, "train", spec.num_train)
    pick = np.random.default_rng(seed).choice(len(train_labels), min(pixels, len(train_labels)), replace=False)
    classifier = fit_softmax(
        quadratic_features(train_rgb[pick]), torch.from_numpy(train_labels[pick].astype(np.int64)), num_classes
    )
    val_rgb, val_labels = labelled_pixels(spec, "val", spec.num_val)
    with torch.no_grad():
        predicted = classifier(quadratic_features(val_rgb)).argmax(1).numpy()
    return mean_iou(predicted, val_labels.astype(np.int64), num_classes)


def main() -> None:
    """Print the colour-only classifier's val mIoU on the embedded dataset."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--num-train", type=int, default=DEFAULT_SPEC.num_train)
    parser.add_argument("--num-val", type=int, default=DEFAULT_SPEC.num_val)
    parser.add_argument("--pixels", type=int, default=300_000, help="train pixels the classifier is fitted on")
    args = parser.parse_args()
    torch.manual_seed(0)
    spec = dataclasses.replace(DEFAULT_SPEC, num_train=args.num_train, num_val=args.num_val)
    score = colour_baseline_miou(spec, num_classes=6, pixels=args.pixels)
    print(f"per-pixel quadratic-RGB classifier, {args.num_train} train / {args.num_val} val images: val mIoU {score:.3f}")


if __name__ == "__main__":
    main()
