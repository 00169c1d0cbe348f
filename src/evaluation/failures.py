"""The worst images of an evaluation, predicted again and drawn: image | label | prediction | error | entropy.

Each image is predicted alone at its own size, padded as the test loop padded it, in the same
inference mode, so the picture shows the prediction its per-image scores were computed from.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from src.data.palette import colorize
from src.data.transforms import normalize, pad_collate
from src.inference import InferenceOptions, probabilities, segment_padded_scores
from src.visualization import entropy_map, error_map, panel_grid

PANEL_TITLES = ("image", "label", "prediction", "error", "entropy")


@dataclass
class Failure:
    """One of the worst images: its per_image.csv row and its panels (RGB uint8, left to right)."""

    row: Mapping[str, Any]
    panels: tuple[np.ndarray, ...]

    @property
    def caption(self) -> str:
        """`#1 name: mIoU 0.1234, pixel accuracy 0.5678`."""
        scores = ", ".join(
            f"{label} {'-' if self.row[key] is None else format(self.row[key], '.4f')}"
            for key, label in (("mIoU", "mIoU"), ("pixel_accuracy", "pixel accuracy"))
        )
        return f"#{self.row['rank']} {self.row['image']}: {scores}"


@torch.no_grad()
def render_failures(
    model: nn.Module,
    dataset: Any,
    rows: Sequence[Mapping[str, Any]],
    count: int,
    options: InferenceOptions,
    pad_multiple: int,
    convention: str,
    ignore_index: int,
    table: np.ndarray,
) -> list[Failure]:
    """Panels of the first `count` rows (worst first) of `dataset` (a SegmentationDataset of the split)."""
    index_of = {image.stem: index for index, (image, _) in enumerate(dataset.pairs)}
    device = next(model.parameters()).device
    failures = []
    for row in rows[:count]:
        sample = dataset[index_of[row["image"]]]
        batch = pad_collate([sample], ignore_index=ignore_index, multiple=pad_multiple)
        images = normalize(batch["image"].to(device), convention)
        scores = segment_padded_scores(
            model, images, batch["sizes"].tolist(), options, pad_multiple
        )[0]
        probs = probabilities(scores.unsqueeze(0), options)[0].cpu()
        prediction = probs.argmax(0).numpy()
        label = sample["mask"].numpy()
        panels = (
            sample["image"].permute(1, 2, 0).numpy(),
            colorize(label, table),
            colorize(prediction, table),
            error_map(prediction, label, ignore_index),
            entropy_map(probs.numpy()),
        )
        failures.append(Failure(row, panels))
    return failures


def failure_grid(failures: Sequence[Failure]) -> np.ndarray:
    """All failures in one picture, a captioned row each (worst_images.png, TensorBoard)."""
    return panel_grid([f.panels for f in failures], PANEL_TITLES, [f.caption for f in failures])
