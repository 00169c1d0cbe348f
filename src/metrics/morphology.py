"""Boundaries of label maps on the device: separable max/min pooling instead of OpenCV per image.

A label map holds every class mask at once: a pixel lies inside its own class's eroded mask exactly
when every label in its window equals its own, i.e. when the window's max and min are equal. So one
pooling pass over the label map (not one per class) gives every class's erosion.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

# A label no class or ignore_index takes: what lies beyond the image frame.
OUTSIDE = -1.0


def _max_pool_separable(maps: Tensor, radius: int) -> Tensor:
    """Max over the (2r+1) x (2r+1) window around each pixel of (N, K, H, W) maps padded by r."""
    rows = F.max_pool2d(maps, kernel_size=(1, 2 * radius + 1), stride=1)
    return F.max_pool2d(rows, kernel_size=(2 * radius + 1, 1), stride=1)


def boundary_band(labels: Tensor, width: int) -> Tensor:
    """Pixels within Chebyshev distance `width` of another label or of the image frame, (N, H, W) bool.

    For one class's binary mask this is boundary-iou-api's `mask_to_boundary` (Cheng et al., CVPR
    2021): the mask minus its erosion by `width` iterations of a 3x3 square, computed on the mask
    padded with zeros, so a mask cut by the image frame has a boundary there. For a label map, the
    band of class c is `band & (labels == c)`; an ignored pixel counts as another label.
    """
    if width < 1:
        raise ValueError(f"boundary width {width}: expected at least 1 pixel")
    padded = F.pad(labels.float().unsqueeze(1), (width,) * 4, value=OUTSIDE)
    # max and -min of the window in one pooling pass (two channels)
    extremes = _max_pool_separable(torch.cat([padded, -padded], dim=1), width)
    return (extremes[:, 0] + extremes[:, 1]) != 0  # max != min: another label in the window


def inner_contour(labels: Tensor) -> Tensor:
    """Pixels with a 4-neighbour of another label inside the image, (N, H, W) bool: 1-pixel boundaries.

    The contour of class c is `contour & (labels == c)`: its mask's inner boundary against other
    labels. The image frame is not a contour (it is not a change of class).
    """
    contour = torch.zeros_like(labels, dtype=torch.bool)
    vertical = labels[:, 1:, :] != labels[:, :-1, :]
    horizontal = labels[:, :, 1:] != labels[:, :, :-1]
    contour[:, 1:, :] |= vertical
    contour[:, :-1, :] |= vertical
    contour[:, :, 1:] |= horizontal
    contour[:, :, :-1] |= horizontal
    return contour


def disk_half_widths(radius: float) -> list[int]:
    """For each row offset dy in [0, floor(radius)], the largest dx with dx^2 + dy^2 <= radius^2."""
    limit = radius * radius
    widths = []
    for dy in range(math.floor(radius) + 1):
        dx = math.isqrt(max(0, math.floor(limit - dy * dy)))
        while (dx + 1) ** 2 + dy * dy <= limit:  # floor() of a non-integer radius^2 undershoots
            dx += 1
        widths.append(dx)
    return widths


def dilate_disk(masks: Tensor, radius: float) -> Tensor:
    """Pixels within Euclidean distance `radius` of a set pixel of (N, K, H, W) masks, bool.

    A disk is not separable, but it is a stack of centred rows: a horizontal max-pool per distinct
    row half-width, shifted up and down by the row's offset. Outside the image nothing is set.
    """
    maps = masks.float()
    height = maps.shape[-2]
    widths = disk_half_widths(radius)
    rows = {
        w: F.max_pool2d(maps, kernel_size=(1, 2 * w + 1), stride=1, padding=(0, w))
        for w in set(widths)
    }
    out = rows[widths[0]].clone()
    for dy in range(1, min(len(widths), height)):
        shifted = rows[widths[dy]]
        # a pixel at row y is reached from set pixels at rows y - dy and y + dy
        out[..., dy:, :] = torch.maximum(out[..., dy:, :], shifted[..., : height - dy, :])
        out[..., : height - dy, :] = torch.maximum(out[..., : height - dy, :], shifted[..., dy:, :])
    return out > 0
