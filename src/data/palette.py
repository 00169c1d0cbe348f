"""Pascal VOC's colour palette: class index <-> colour, and palette ("P" mode) PNG masks."""

from __future__ import annotations

from functools import cache
from pathlib import Path

import numpy as np
from PIL import Image


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


def colorize(mask: np.ndarray, palette: np.ndarray | None = None) -> np.ndarray:
    """Map a (H,W) class-index mask to (H,W,3) uint8 colours (VOC's palette by default)."""
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
