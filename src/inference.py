"""Whole-image, sliding-window and test-time-augmented prediction (pure torch).

The modes follow mmsegmentation's test-time options: `slide` averages the logits of overlapping
crop windows; TTA averages the softmax probabilities over rescaled and horizontally flipped copies.
Every function maps normalised images (N, 3, H, W) to scores (N, C, H, W) at the input size; the
class is the argmax over C whatever the mode (logits without TTA, probabilities with it).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from src.data.transforms import padded_size
from src.models.contract import MIN_INPUT_SIZE, main_logits
from src.utils.errors import UserError

Forward = Callable[[torch.Tensor], torch.Tensor]

MODES = ("whole", "slide")
DEFAULT_SCALES = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)
# The model contract: any H, W >= 32. Rescaled TTA copies are kept at least this large.
MIN_SIZE = MIN_INPUT_SIZE


def _pair(value: int | Sequence[int], key: str) -> tuple[int, int]:
    pair = (value, value) if isinstance(value, int) else tuple(value)
    if len(pair) != 2 or not all(isinstance(v, int) and v > 0 for v in pair):
        raise UserError(f"{key}={value!r}: expected a positive int or a [height, width] pair")
    return int(pair[0]), int(pair[1])


@dataclass(frozen=True)
class InferenceOptions:
    """How to turn a model into a per-pixel prediction: mode, window, TTA scales and flip."""

    mode: str = "whole"
    crop_size: tuple[int, int] = (512, 512)
    stride: tuple[int, int] = (341, 341)
    tta: bool = False
    scales: tuple[float, ...] = DEFAULT_SCALES
    flip: bool = True

    @classmethod
    def from_config(cls, section: Mapping[str, Any], prefix: str) -> InferenceOptions:
        """Build and check options from a plain config section (other keys ignored); errors name `<prefix>.<key>`."""
        mode = str(section.get("mode", "whole"))
        if mode not in MODES:
            raise UserError(f"{prefix}.mode={mode!r}: expected one of {', '.join(MODES)}")
        crop = _pair(section.get("crop_size", 512), f"{prefix}.crop_size")
        stride = _pair(section.get("stride", 341), f"{prefix}.stride")
        if stride[0] > crop[0] or stride[1] > crop[1]:
            raise UserError(
                f"{prefix}.stride={list(stride)} exceeds {prefix}.crop_size={list(crop)}: windows would leave gaps"
            )
        scales = tuple(float(s) for s in section.get("scales", DEFAULT_SCALES))
        if not scales or min(scales) <= 0:
            raise UserError(
                f"{prefix}.scales={list(scales)}: expected a non-empty list of positive factors"
            )
        return cls(
            mode,
            crop,
            stride,
            bool(section.get("tta", False)),
            scales,
            bool(section.get("flip", True)),
        )


def predict_whole(forward: Forward, images: torch.Tensor) -> torch.Tensor:
    """Logits of the whole image in one pass, at the input size."""
    logits = main_logits(forward(images))
    if logits.shape[-2:] != images.shape[-2:]:
        logits = F.interpolate(logits, size=images.shape[-2:], mode="bilinear", align_corners=False)
    return logits


def window_starts(length: int, crop: int, stride: int) -> list[int]:
    """Start offsets of windows of `crop` every `stride` that cover [0, length); the last one ends at the edge."""
    if length <= crop:
        return [0]
    count = -(-(length - crop) // stride) + 1
    return [min(i * stride, length - crop) for i in range(count)]


def predict_slide(
    forward: Forward, images: torch.Tensor, crop: tuple[int, int], stride: tuple[int, int]
) -> torch.Tensor:
    """Logits averaged over overlapping crop windows (mmseg's slide inference)."""
    height, width = images.shape[-2:]
    total: torch.Tensor | None = None
    count = images.new_zeros((1, 1, height, width))
    for top in window_starts(height, crop[0], stride[0]):
        for left in window_starts(width, crop[1], stride[1]):
            bottom, right = min(top + crop[0], height), min(left + crop[1], width)
            logits = predict_whole(forward, images[..., top:bottom, left:right])
            if total is None:
                total = logits.new_zeros((*logits.shape[:2], height, width))
            total[..., top:bottom, left:right] += logits
            count[..., top:bottom, left:right] += 1
    return total / count


def predict_single_scale(
    forward: Forward, images: torch.Tensor, options: InferenceOptions
) -> torch.Tensor:
    """Logits of one pass in the configured mode (whole or slide)."""
    if options.mode == "slide":
        return predict_slide(forward, images, options.crop_size, options.stride)
    return predict_whole(forward, images)


def scaled_size(height: int, width: int, scale: float, min_size: int = MIN_SIZE) -> tuple[int, int]:
    """(H, W) times `scale`, rounded, and no side below `min_size` (the models' smallest input)."""
    return max(min_size, round(height * scale)), max(min_size, round(width * scale))


def predict_tta(forward: Forward, images: torch.Tensor, options: InferenceOptions) -> torch.Tensor:
    """Softmax probabilities averaged over the scales and, if enabled, horizontal flips."""
    height, width = images.shape[-2:]
    flips = (False, True) if options.flip else (False,)
    total = None
    for scale in options.scales:
        size = scaled_size(height, width, scale)
        scaled = (
            images
            if size == (height, width)
            else F.interpolate(images, size=size, mode="bilinear", align_corners=False)
        )
        for flip in flips:
            logits = predict_single_scale(forward, scaled.flip(-1) if flip else scaled, options)
            if flip:
                logits = logits.flip(-1)
            if logits.shape[-2:] != (height, width):
                logits = F.interpolate(
                    logits, size=(height, width), mode="bilinear", align_corners=False
                )
            probs = logits.float().softmax(1)
            total = probs if total is None else total + probs
    return total / (len(options.scales) * len(flips))


def segment(forward: Forward, images: torch.Tensor, options: InferenceOptions) -> torch.Tensor:
    """Scores (N, C, H, W) in the configured mode; argmax over C is the prediction."""
    if options.tta:
        return predict_tta(forward, images, options)
    return predict_single_scale(forward, images, options)


def probabilities(scores: torch.Tensor, options: InferenceOptions) -> torch.Tensor:
    """Softmax probabilities over dim 1 from what `segment` returned (TTA already averages them)."""
    return scores.float() if options.tta else scores.float().softmax(1)


def segment_padded_scores(
    forward: Forward,
    images: torch.Tensor,
    sizes: Sequence[tuple[int, int]],
    options: InferenceOptions,
    multiple: int,
) -> list[torch.Tensor]:
    """Scores (C, h, w) for a batch padded bottom/right, each image seen at its own size rounded up to `multiple`.

    A batch is padded to its largest image; predicting every image on its own padded extent
    (grouping images of the same extent) makes a prediction independent of its batch-mates, so
    eval.py and predict.py give the same mask for the same file.
    """
    groups: dict[tuple[int, int], list[int]] = {}
    for index, (h, w) in enumerate(sizes):
        groups.setdefault(padded_size(int(h), int(w), multiple), []).append(index)
    scores: list[torch.Tensor | None] = [None] * len(sizes)
    for (height, width), members in groups.items():
        group_scores = segment(forward, images[members, :, :height, :width], options)
        for row, index in enumerate(members):
            h, w = (int(v) for v in sizes[index])
            scores[index] = group_scores[row, :, :h, :w]
    return scores  # type: ignore[return-value]


def segment_padded_batch(
    forward: Forward,
    images: torch.Tensor,
    sizes: Sequence[tuple[int, int]],
    options: InferenceOptions,
    multiple: int,
) -> list[torch.Tensor]:
    """Class masks (h, w) of `segment_padded_scores`: the argmax of each image's scores."""
    return [
        scores.argmax(0) for scores in segment_padded_scores(forward, images, sizes, options, multiple)
    ]
