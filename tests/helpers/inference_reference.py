"""An independent reference of what eval.py and predict.py compute for one image, written plainly.

It restates the documented semantics (pad bottom/right with the mean colour to a multiple, ImageNet
normalisation, mmseg's slide windows ending at the edge, TTA as the mean softmax over rescaled and
flipped copies) with its own loops, so a test comparing against it can fail when a mode is not
applied or a knob (crop, stride, scales, pad_multiple) does not reach the prediction.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

MEAN = np.array([0.485, 0.456, 0.406]) * 255
STD = np.array([0.229, 0.224, 0.225]) * 255


@dataclass
class Mode:
    """The inference options a reference prediction follows."""

    slide: tuple[int, int] | None = None  # (crop, stride) for square windows
    scales: tuple[float, ...] | None = None  # TTA scales (None: no TTA)
    flip: bool = False
    pad_multiple: int = 32


def _padded_input(image: np.ndarray, multiple: int) -> torch.Tensor:
    """RGB uint8 (h, w, 3) -> normalised (1, 3, H, W), padded with the rounded ImageNet mean colour."""
    h, w = image.shape[:2]
    height, width = -(-h // multiple) * multiple, -(-w // multiple) * multiple
    canvas = np.empty((height, width, 3), np.float64)
    canvas[:] = np.round(MEAN)
    canvas[:h, :w] = image
    normalised = (canvas - MEAN) / STD
    return torch.from_numpy(normalised.transpose(2, 0, 1)[None]).float()


def _starts(length: int, crop: int, stride: int) -> list[int]:
    if length <= crop:
        return [0]
    return [*range(0, length - crop, stride), length - crop]


def _slide(model, x: torch.Tensor, crop: int, stride: int) -> torch.Tensor:
    height, width = x.shape[-2:]
    total, count = None, torch.zeros(1, 1, height, width)
    for top in _starts(height, crop, stride):
        for left in _starts(width, crop, stride):
            window = x[..., top : top + crop, left : left + crop]
            logits = model(window)
            if total is None:
                total = torch.zeros(1, logits.shape[1], height, width)
            total[..., top : top + window.shape[-2], left : left + window.shape[-1]] += logits
            count[..., top : top + window.shape[-2], left : left + window.shape[-1]] += 1
    return total / count


def _once(model, x: torch.Tensor, mode: Mode) -> torch.Tensor:
    return _slide(model, x, *mode.slide) if mode.slide else model(x)


def _tta(model, x: torch.Tensor, mode: Mode) -> torch.Tensor:
    height, width = x.shape[-2:]
    probabilities = []
    for scale in mode.scales:
        size = (max(32, round(height * scale)), max(32, round(width * scale)))
        scaled = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        for flipped in (False, True) if mode.flip else (False,):
            view = torch.flip(scaled, dims=[3]) if flipped else scaled
            logits = _once(model, view, mode)
            logits = torch.flip(logits, dims=[3]) if flipped else logits
            logits = F.interpolate(logits, size=(height, width), mode="bilinear", align_corners=False)
            probabilities.append(torch.softmax(logits, dim=1))
    return torch.stack(probabilities).mean(0)


def _scores(model, image: np.ndarray, mode: Mode) -> torch.Tensor:
    """(1, C, H, W) at the padded size: logits, or the mean softmax under TTA."""
    x = _padded_input(image, mode.pad_multiple)
    return _tta(model, x, mode) if mode.scales else _once(model, x, mode)


@torch.no_grad()
def reference_mask(model, image: np.ndarray, mode: Mode) -> np.ndarray:
    """The class mask (h, w) of one RGB image under `mode`, at the image's own size."""
    h, w = image.shape[:2]
    return _scores(model, image, mode).argmax(1)[0, :h, :w].numpy().astype(np.uint8)


@torch.no_grad()
def reference_probabilities(model, image: np.ndarray, mode: Mode) -> np.ndarray:
    """Softmax probabilities (C, h, w) of one RGB image under `mode`, at the image's own size."""
    scores = _scores(model, image, mode)
    probabilities = scores if mode.scales else torch.softmax(scores, dim=1)
    h, w = image.shape[:2]
    return probabilities[0, :, :h, :w].numpy()


def confusion(masks: list[np.ndarray], predictions: list[np.ndarray], num_classes: int) -> np.ndarray:
    """Confusion matrix (rows: ground truth) over pairs of masks, labels outside [0, n) dropped."""
    hist = np.zeros((num_classes, num_classes), np.int64)
    for mask, prediction in zip(masks, predictions, strict=True):
        keep = mask < num_classes
        index = num_classes * mask[keep].astype(np.int64) + prediction[keep]
        hist += np.bincount(index, minlength=num_classes**2).reshape(num_classes, num_classes)
    return hist
