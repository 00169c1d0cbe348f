"""Colours of class masks: VOC's palette, a user's palette as a lookup table, colourised masks, palette PNGs.

The one colouriser: training's TensorBoard grid, predict.py's overlays and the dataset files all use it.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache
from pathlib import Path

import numpy as np
from PIL import Image

# Ignored pixels (and colours a user palette leaves undefined) in pictures.
IGNORE_RGB = (255, 255, 255)


def voc_palette(num: int = 256) -> np.ndarray:
    """Return VOC's colormap as uint8 (num, 3): class 1 = (128,0,0), ..., 255 = (224,224,192)."""
    if not 1 <= num <= 256:
        raise ValueError(f"voc_palette(num={num}): expected 1 <= num <= 256")
    # VOCdevkit's labelcolormap: bit k of the index (k = 0,1,2 for R,G,B, then every third bit)
    # goes into the colour channel's bits from the most significant one down.
    index = np.arange(num)
    palette = np.zeros((num, 3), dtype=np.int64)
    for shift in range(8):
        for channel in range(3):
            bit = (index >> (3 * shift + channel)) & 1
            palette[:, channel] |= bit << (7 - shift)
    return palette.astype(np.uint8)


@cache
def _voc_palette_list() -> list[int]:
    """VOC's 256 colours flattened for PIL's putpalette, computed once."""
    return voc_palette().reshape(-1).tolist()


def _checked_palette(mask: np.ndarray, palette: np.ndarray | None) -> np.ndarray:
    """Return `palette` (VOC's by default) as uint8 (N,3), checking that it covers `mask`'s values."""
    palette = voc_palette() if palette is None else np.asarray(palette)
    if palette.ndim != 2 or palette.shape[1] != 3 or not 1 <= len(palette) <= 256:
        raise ValueError(f"palette has shape {palette.shape}; expected (N, 3) with 1 <= N <= 256")
    if mask.size and int(mask.max()) >= len(palette):
        raise ValueError(
            f"mask holds value {int(mask.max())} but the palette has only {len(palette)} colours"
        )
    return palette.astype(np.uint8)


def _checked_mask(mask: np.ndarray) -> np.ndarray:
    """Return a 2-D integer mask with values in [0, 255] as uint8."""
    mask = np.asarray(mask)
    if mask.ndim != 2 or not np.issubdtype(mask.dtype, np.integer):
        raise ValueError(
            f"mask has shape {mask.shape} and dtype {mask.dtype}; expected a 2-D integer array"
        )
    if mask.size and (int(mask.min()) < 0 or int(mask.max()) > 255):
        raise ValueError(
            f"mask values span [{mask.min()}, {mask.max()}]; expected class indices in [0, 255]"
        )
    return mask.astype(np.uint8, copy=False)


def colour_table(
    palette: np.ndarray | Sequence[Sequence[int]] | None = None, ignore_index: int = 255
) -> np.ndarray:
    """A 256-colour lookup table: the given colours (VOC's by default), ignore_index and the rest in IGNORE_RGB."""
    table = np.tile(np.array(IGNORE_RGB, dtype=np.uint8), (256, 1))
    if palette is None:
        table[:] = voc_palette(256)  # VOC's own colour for 255, the object borders
        return table
    colours = np.asarray(palette, dtype=np.int64)
    if (
        colours.ndim != 2
        or colours.shape[1] != 3
        or not 1 <= len(colours) <= 256
        or colours.min() < 0
        or colours.max() > 255
    ):
        raise ValueError(
            f"palette has shape {colours.shape}; expected (N, 3) RGB values in [0, 255], N <= 256"
        )
    table[: len(colours)] = colours
    if len(colours) <= ignore_index < 256:
        table[ignore_index] = IGNORE_RGB
    return table


def colorize(mask: np.ndarray, palette: np.ndarray | None = None) -> np.ndarray:
    """Map a (H,W) class-index mask to (H,W,3) uint8 colours through `palette` (N,3) (VOC's by default).

    `palette` may be a `colour_table` (256 entries: every value has a colour) or one colour per class.
    """
    mask = _checked_mask(mask)
    return _checked_palette(mask, palette)[mask]


def save_palette_png(path: str | Path, mask: np.ndarray, palette: np.ndarray | None = None) -> None:
    """Write a (H,W) class-index mask as a palette ("P" mode) PNG, as VOC's SegmentationClass does."""
    mask = _checked_mask(mask)
    colours = (
        _voc_palette_list()
        if palette is None
        else _checked_palette(mask, palette).reshape(-1).tolist()
    )
    image = Image.fromarray(mask)  # mode "L"; putpalette turns it into "P" without touching indices
    image.putpalette(colours)
    image.save(path, format="PNG")
