"""Training augmentation presets (conf/data/augment/): callables (image uint8 HWC RGB, mask uint8 HW) -> pair.

Every preset is joint on image and mask: masks are resampled with nearest neighbour and padded with
ignore_index, never background. Every preset takes `crop_size` and `base_size`, so `debug=smoke`
and the dataset configs can set them whichever preset is chosen.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from src.data.photometric import PhotometricDistortion, hsv_jitter
from src.data.transforms import Pair, dominant_ratio, hflip, pad_to, randint, resize_pair, uniform
from src.utils.errors import UserError

ImageOp = Callable[[np.ndarray], np.ndarray]


def _photometric(option: bool | Mapping[str, Any] | ImageOp | None) -> ImageOp | None:
    """`photometric: true` -> mmseg's defaults; a mapping -> PhotometricDistortion(**it); false/null -> none."""
    if option is None or option is False:
        return None
    if option is True:
        return PhotometricDistortion()
    if isinstance(option, Mapping):
        return PhotometricDistortion(**option)
    if callable(option):
        return option
    raise UserError(
        f"data.augment.photometric={option!r}: expected true, false, or a mapping of PhotometricDistortion's arguments"
    )


def _check_size(name: str, value: int) -> int:
    try:
        value = int(value)
    except (TypeError, ValueError):
        raise UserError(f"data.augment.{name}={value}: expected a number of pixels") from None
    if value < 1:
        raise UserError(f"data.augment.{name}={value}: expected a positive number of pixels")
    return value


def _check_crop(value: int | Sequence[int]) -> tuple[int, int]:
    """`crop_size` as (height, width): one side for a square, or [height, width] (Cityscapes' 512x1024)."""
    if isinstance(value, int | str):
        side = _check_size("crop_size", value)
        return side, side
    sides = list(value)
    if len(sides) != 2:
        raise UserError(f"data.augment.crop_size={sides}: expected a side or [height, width]")
    return _check_size("crop_size", sides[0]), _check_size("crop_size", sides[1])


def _check_ignore(ignore_index: int) -> int:
    if not 0 <= int(ignore_index) <= 255:
        raise UserError(
            f"data.augment.ignore_index={ignore_index}: expected 0..255 (masks are uint8)"
        )
    return int(ignore_index)


class RandomResizeCrop:
    """The `crop` preset (torchvision's segmentation reference and mmseg): resize, crop, flip, colour.

    Resize so the short side is base_size x U(scale_range); take a random crop_size window (a side,
    or [height, width]), redrawn
    up to 10 times while one class fills `cat_max_ratio` or more of its labelled pixels (mmseg's
    RandomCrop), padded bottom/right (mask: ignore_index) where the image is smaller; flip with
    `hflip_prob`; then photometric distortion of the image.
    """

    retries = 10

    def __init__(
        self,
        crop_size: int | Sequence[int],
        base_size: int,
        scale_range: Sequence[float] = (0.5, 2.0),
        hflip_prob: float = 0.5,
        cat_max_ratio: float = 0.75,
        photometric: bool | Mapping[str, Any] | ImageOp | None = True,
        ignore_index: int = 255,
    ) -> None:
        self.crop_height, self.crop_width = _check_crop(crop_size)
        self.base_size = _check_size("base_size", base_size)
        self.scale_range = (float(scale_range[0]), float(scale_range[1]))
        self.hflip_prob = float(hflip_prob)
        self.cat_max_ratio = float(cat_max_ratio)
        self.photometric = _photometric(photometric)
        self.ignore_index = _check_ignore(ignore_index)

    def __call__(self, image: np.ndarray, mask: np.ndarray) -> Pair:
        """Apply the random resize, crop (with cat_max_ratio), pad, flip and colour jointly."""
        h, w = mask.shape
        factor = self.base_size * uniform(*self.scale_range) / min(h, w)
        image, mask = resize_pair(image, mask, round(w * factor), round(h * factor))
        top, left = self._window(mask)
        rows, cols = slice(top, top + self.crop_height), slice(left, left + self.crop_width)
        # Crop, then pad: the same pixels as padding first, without copying the whole image.
        image, mask = pad_to(
            image[rows, cols], mask[rows, cols], self.crop_height, self.crop_width, self.ignore_index
        )
        if uniform(0.0, 1.0) < self.hflip_prob:
            image, mask = hflip(image, mask)
        image = np.ascontiguousarray(image)
        if self.photometric is not None:
            image = self.photometric(image)
        return image, np.ascontiguousarray(mask)

    def _window(self, mask: np.ndarray) -> tuple[int, int]:
        """Top-left corner of the crop window; padding would add only ignored pixels, so unpadded."""
        height, width = self.crop_height, self.crop_width
        for attempt in range(self.retries + 1):
            top = randint(0, max(mask.shape[0] - height, 0))
            left = randint(0, max(mask.shape[1] - width, 0))
            if self.cat_max_ratio >= 1.0 or attempt == self.retries:
                break
            if (
                dominant_ratio(mask[top : top + height, left : left + width], self.ignore_index)
                < self.cat_max_ratio
            ):
                break
        return top, left


class LetterboxJitter:
    """The `letterbox` preset: letterbox resize with aspect, scale and HSV jitter.

    The geometry and colour jitter of the VOC loader this project started from (`get_random_data`).
    Stretch the aspect ratio by U(1-jitter, 1+jitter) / U(1-jitter, 1+jitter), scale the longer
    side to base_size x U(scale_range), flip, place at a random offset on a crop_size grey (128)
    canvas (cropping what overflows), then jitter hue/saturation/value by (hue, sat, val).
    That loader padded masks with 0 (background); here the canvas outside the image is ignored.
    """

    def __init__(
        self,
        crop_size: int,
        base_size: int | None = None,
        jitter: float = 0.3,
        scale_range: Sequence[float] = (0.25, 2.0),
        hflip_prob: float = 0.5,
        hue: float = 0.1,
        sat: float = 0.7,
        val: float = 0.3,
        fill: int = 128,
        ignore_index: int = 255,
    ) -> None:
        self.crop_size = _check_size("crop_size", crop_size)
        self.base_size = _check_size("base_size", base_size or crop_size)
        self.jitter = float(jitter)
        self.scale_range = (float(scale_range[0]), float(scale_range[1]))
        self.hflip_prob = float(hflip_prob)
        self.hsv = (float(hue), float(sat), float(val))
        self.fill = int(fill)
        self.ignore_index = _check_ignore(ignore_index)

    def __call__(self, image: np.ndarray, mask: np.ndarray) -> Pair:
        """Apply the aspect/scale jitter, flip, letterbox placement and HSV jitter jointly."""
        h, w = mask.shape
        aspect = (
            w
            / h
            * uniform(1 - self.jitter, 1 + self.jitter)
            / uniform(1 - self.jitter, 1 + self.jitter)
        )
        long_side = uniform(*self.scale_range) * self.base_size
        if aspect < 1:
            new_h = max(1, int(long_side))
            new_w = max(1, int(new_h * aspect))
        else:
            new_w = max(1, int(long_side))
            new_h = max(1, int(new_w / aspect))
        # That loader resizes with PIL's bicubic; bilinear here, as in the `crop` preset (cheaper).
        image, mask = resize_pair(image, mask, new_w, new_h)
        if uniform(0.0, 1.0) < self.hflip_prob:
            image, mask = hflip(image, mask)
        dx = int(uniform(*sorted((0.0, float(self.crop_size - new_w)))))
        dy = int(uniform(*sorted((0.0, float(self.crop_size - new_h)))))
        size = self.crop_size
        canvas = np.full((size, size, 3), self.fill, dtype=np.uint8)
        labels = np.full((size, size), self.ignore_index, dtype=np.uint8)
        # Paste at (dx, dy), cropping whatever falls outside the canvas (dx, dy may be negative).
        src = (slice(max(0, -dy), min(new_h, size - dy)), slice(max(0, -dx), min(new_w, size - dx)))
        dst = (slice(max(0, dy), min(size, dy + new_h)), slice(max(0, dx), min(size, dx + new_w)))
        canvas[dst], labels[dst] = image[src], mask[src]
        if any(self.hsv):  # hue=sat=val=0 turns it off (the HSV round trip itself is lossy)
            canvas = hsv_jitter(canvas, *self.hsv)
        return canvas, labels


class NoAugment:
    """The `none` preset: full images, unchanged (batches are padded by the collate)."""

    def __init__(self, crop_size: int | None = None, base_size: int | None = None) -> None:
        # Accepted and unused, so configs that size the crop (debug=smoke) also work with `none`.
        self.crop_size, self.base_size = crop_size, base_size

    def __call__(self, image: np.ndarray, mask: np.ndarray) -> Pair:
        """Return the pair unchanged."""
        return image, mask
