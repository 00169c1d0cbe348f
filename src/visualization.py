"""Pictures of predictions: palette colours, overlays, sample grids, error and entropy maps, the
confusion-matrix image. The reliability diagram is in src/evaluation/reliability.py.

Pure numpy/OpenCV (matplotlib is not a dependency); every function returns RGB uint8 (H, W, 3).
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
import torch

from src.data.palette import colorize

ABSENT_ROW_RGB = (200, 200, 200)
BACKGROUND_RGB = (255, 255, 255)
# Row-normalised cells are shaded from white (0) to a dark blue (1).
HIGH_RGB = np.array((8, 48, 107), dtype=np.float64)
FONT = cv2.FONT_HERSHEY_SIMPLEX
CORRECT_RGB = (64, 64, 64)
WRONG_RGB = (230, 30, 30)


def overlay(image: np.ndarray, colours: np.ndarray, alpha: float) -> np.ndarray:
    """Blend a colour mask over an RGB image: (1 - alpha) * image + alpha * colours."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"overlay alpha={alpha}: expected a value in [0, 1]")
    blend = (1.0 - alpha) * image.astype(np.float32) + alpha * colours.astype(np.float32)
    return np.clip(np.rint(blend), 0, 255).astype(np.uint8)


def _text(
    canvas: np.ndarray, text: str, origin: tuple[int, int], scale: float, colour=(0, 0, 0)
) -> None:
    cv2.putText(canvas, text, origin, FONT, scale, colour, 1, cv2.LINE_AA)


def _text_size(text: str, scale: float) -> tuple[int, int]:
    (width, height), baseline = cv2.getTextSize(text, FONT, scale, 1)
    return width, height + baseline


def panel_grid(
    rows: Sequence[Sequence[np.ndarray]],
    titles: Sequence[str],
    captions: Sequence[str] | None = None,
    gap: int = 4,
) -> np.ndarray:
    """RGB panels laid out in rows under a title strip naming the columns; a caption above each row.

    Panels of smaller samples are placed top-left in cells as large as the largest panel.
    """
    if not rows:
        raise ValueError("panel_grid needs at least one row of panels")
    cell_h = max(panel.shape[0] for row in rows for panel in row)
    cell_w = max(panel.shape[1] for row in rows for panel in row)
    line = _text_size("Ag", 0.4)[1] + 2 * gap
    caption_h = line if captions else 0
    columns = len(titles)
    canvas = np.full(
        (line + len(rows) * (caption_h + cell_h + gap), columns * (cell_w + gap) + gap, 3),
        BACKGROUND_RGB,
        np.uint8,
    )
    for col, title in enumerate(titles):
        _text(canvas, title, (gap + col * (cell_w + gap), line - gap - 2), 0.4)
    for index, row in enumerate(rows):
        top = line + index * (caption_h + cell_h + gap)
        if captions:
            _text(canvas, captions[index], (gap, top + caption_h - gap - 2), 0.4)
        top += caption_h
        for col, panel in enumerate(row):
            left = gap + col * (cell_w + gap)
            canvas[top : top + panel.shape[0], left : left + panel.shape[1]] = panel
    return canvas


def sample_grid(
    rows: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]],
    table: np.ndarray,
    titles: Sequence[str] = ("image", "ground truth", "prediction"),
    gap: int = 4,
) -> np.ndarray:
    """One row per sample: image, ground truth and prediction (palette colours) side by side."""
    if not rows:
        raise ValueError("sample_grid needs at least one (image, target, prediction) row")
    panels = [(image, colorize(target, table), colorize(pred, table)) for image, target, pred in rows]
    return panel_grid(panels, titles, gap=gap)


def error_map(prediction: np.ndarray, target: np.ndarray, ignore_index: int) -> np.ndarray:
    """Right pixels dark grey, wrong ones red, ignored ones white (they count nowhere)."""
    canvas = np.empty((*target.shape, 3), np.uint8)
    canvas[:] = CORRECT_RGB
    canvas[prediction != target] = WRONG_RGB
    canvas[target == ignore_index] = BACKGROUND_RGB
    return canvas


def entropy_map(probabilities: np.ndarray) -> np.ndarray:
    """Per-pixel entropy of (C, H, W) probabilities over log(C), as viridis colours (dark: certain)."""
    probs = np.clip(np.asarray(probabilities, dtype=np.float64), 1e-12, 1.0)
    entropy = -(probs * np.log(probs)).sum(0) / max(np.log(len(probs)), 1e-12)
    levels = np.clip(np.rint(255 * entropy), 0, 255).astype(np.uint8)
    return cv2.cvtColor(cv2.applyColorMap(levels, cv2.COLORMAP_VIRIDIS), cv2.COLOR_BGR2RGB)


def row_normalize(confmat: np.ndarray) -> np.ndarray:
    """Each ground-truth row divided by its sum (recall per class); rows without pixels stay 0."""
    matrix = np.asarray(confmat, dtype=np.float64)
    totals = matrix.sum(axis=1, keepdims=True)
    return np.divide(matrix, totals, out=np.zeros_like(matrix), where=totals > 0)


def _cell_colour(value: float) -> np.ndarray:
    return np.rint((1.0 - value) * np.array(BACKGROUND_RGB) + value * HIGH_RGB).astype(np.uint8)


def confusion_matrix_image(
    confmat: np.ndarray | torch.Tensor, class_names: Sequence[str], cell: int = 36
) -> np.ndarray:
    """The row-normalised confusion matrix as an image: ground truth down the side, predictions across the top.

    Cells hold the percentage of the row's pixels; rows of classes absent from the ground truth
    are grey (their recall is undefined, not 0).
    """
    matrix = confmat.cpu().numpy() if isinstance(confmat, torch.Tensor) else np.asarray(confmat)
    num = len(class_names)
    if matrix.shape != (num, num):
        raise ValueError(
            f"confusion matrix has shape {matrix.shape}; expected ({num}, {num}) for {num} class names"
        )
    normalized = row_normalize(matrix)
    present = matrix.sum(axis=1) > 0
    scale, margin = 0.4, 6
    label_w = max(_text_size(name, scale)[0] for name in class_names) + 2 * margin
    title_h = _text_size("Ag", scale)[1] + 2 * margin
    left, top = title_h + label_w, title_h + label_w
    canvas = np.full(
        (top + num * cell + margin, left + num * cell + margin, 3), BACKGROUND_RGB, np.uint8
    )
    for row in range(num):
        for col in range(num):
            y, x = top + row * cell, left + col * cell
            colour = (
                _cell_colour(normalized[row, col])
                if present[row]
                else np.array(ABSENT_ROW_RGB, np.uint8)
            )
            canvas[y : y + cell, x : x + cell] = colour
            if present[row]:
                text = f"{100 * normalized[row, col]:.0f}"
                width, height = _text_size(text, 0.35)
                ink = (255, 255, 255) if normalized[row, col] > 0.5 else (0, 0, 0)
                _text(
                    canvas, text, (x + (cell - width) // 2, y + (cell + height) // 2 - 2), 0.35, ink
                )
    cv2.rectangle(canvas, (left, top), (left + num * cell - 1, top + num * cell - 1), (0, 0, 0), 1)
    for index, name in enumerate(class_names):
        width, height = _text_size(name, scale)
        _text(
            canvas,
            name,
            (left - margin - width, top + index * cell + (cell + height) // 2 - 2),
            scale,
        )
    _draw_column_labels(canvas, class_names, left, title_h, label_w, cell, scale, margin)
    title_w = _text_size("prediction", scale)[0]
    _text(
        canvas, "prediction", (left + max(0, (num * cell - title_w) // 2), title_h - margin), scale
    )
    side = np.full((title_h, top + num * cell, 3), BACKGROUND_RGB, np.uint8)
    title_w = _text_size("ground truth", scale)[0]
    _text(side, "ground truth", (max(0, (num * cell - title_w) // 2), title_h - margin), scale)
    canvas[: top + num * cell, :title_h] = np.rot90(side)  # the side title reads bottom-up
    return canvas


def _draw_column_labels(
    canvas: np.ndarray,
    names: Sequence[str],
    left: int,
    top: int,
    height: int,
    cell: int,
    scale: float,
    margin: int,
) -> None:
    """Class names above the columns, rotated to read bottom-up (drawn on a strip, then rotated)."""
    strip = np.full((len(names) * cell, height, 3), BACKGROUND_RGB, np.uint8)
    for index, name in enumerate(names):
        _, text_h = _text_size(name, scale)
        # rot90 turns strip row r into column r and strip column 0 into the bottom row, next to the matrix.
        _text(strip, name, (margin, index * cell + (cell + text_h) // 2 - 2), scale)
    canvas[top : top + height, left : left + len(names) * cell] = np.rot90(strip)
