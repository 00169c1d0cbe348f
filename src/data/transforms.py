"""Joint image/mask transforms on uint8 numpy arrays, and the collate that pads batches."""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
import torch

# ImageNet statistics (torchvision's backbones were trained with them).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Padding images with the mean colour makes padded pixels ~0 after normalisation.
MEAN_RGB_UINT8 = tuple(round(255 * m) for m in IMAGENET_MEAN)


def _uniform(low: float, high: float) -> float:
    # torch's RNG: the DataLoader reseeds it per worker and per epoch, so draws differ across both.
    return float(torch.empty(()).uniform_(low, high))


def pad_to(image: np.ndarray, mask: np.ndarray, height: int, width: int, ignore_index: int) -> tuple[np.ndarray, np.ndarray]:
    """Pad bottom/right to at least (height, width): image with the mean colour, mask with ignore_index."""
    pad_h, pad_w = max(height - mask.shape[0], 0), max(width - mask.shape[1], 0)
    if pad_h == 0 and pad_w == 0:
        return image, mask
    image = cv2.copyMakeBorder(image, 0, pad_h, 0, pad_w, cv2.BORDER_CONSTANT, value=MEAN_RGB_UINT8)
    mask = cv2.copyMakeBorder(mask, 0, pad_h, 0, pad_w, cv2.BORDER_CONSTANT, value=ignore_index)
    return image, mask


class RandomResizeCrop:
    """Resize the short side to base_size x U(scale_range), pad, random crop_size crop, random h-flip.

    The torchvision reference / mmseg recipe; masks use nearest neighbour and are padded with ignore_index.
    """

    def __init__(
        self,
        crop_size: int,
        base_size: int,
        scale_range: Sequence[float] = (0.5, 2.0),
        hflip_prob: float = 0.5,
        ignore_index: int = 255,
    ) -> None:
        self.crop_size = int(crop_size)
        self.base_size = int(base_size)
        self.scale_range = (float(scale_range[0]), float(scale_range[1]))
        self.hflip_prob = float(hflip_prob)
        self.ignore_index = int(ignore_index)

    def __call__(self, image: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Apply the random resize, pad, crop and flip jointly."""
        image, mask = self._resize(image, mask)
        image, mask = pad_to(image, mask, self.crop_size, self.crop_size, self.ignore_index)
        top = int(torch.randint(0, mask.shape[0] - self.crop_size + 1, ()))
        left = int(torch.randint(0, mask.shape[1] - self.crop_size + 1, ()))
        window = (slice(top, top + self.crop_size), slice(left, left + self.crop_size))
        image, mask = image[window], mask[window]
        if _uniform(0.0, 1.0) < self.hflip_prob:
            image, mask = image[:, ::-1], mask[:, ::-1]
        return image, mask

    def _resize(self, image: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        short_side = self.base_size * _uniform(*self.scale_range)
        factor = short_side / min(mask.shape)
        size = (max(1, round(mask.shape[1] * factor)), max(1, round(mask.shape[0] * factor)))
        image = cv2.resize(image, size, interpolation=cv2.INTER_LINEAR)
        mask = cv2.resize(mask, size, interpolation=cv2.INTER_NEAREST)
        return image, mask


def pad_collate(samples: list[dict], ignore_index: int = 255, multiple: int = 32) -> dict:
    """Stack samples, padding each to the batch's largest size rounded up to `multiple`.

    Padded mask pixels are ignore_index, so losses and metrics on a padded batch equal those at the
    original resolution; `sizes` records each sample's original (H, W) to undo the padding.
    """
    height = max(s["mask"].shape[0] for s in samples)
    width = max(s["mask"].shape[1] for s in samples)
    height, width = -(-height // multiple) * multiple, -(-width // multiple) * multiple
    images = torch.empty((len(samples), 3, height, width), dtype=torch.uint8)
    images[:] = torch.tensor(MEAN_RGB_UINT8, dtype=torch.uint8).view(1, 3, 1, 1)
    masks = torch.full((len(samples), height, width), ignore_index, dtype=torch.uint8)
    for i, s in enumerate(samples):
        h, w = s["mask"].shape
        images[i, :, :h, :w] = s["image"]
        masks[i, :h, :w] = s["mask"]
    return {
        "image": images,
        "mask": masks,
        "sizes": torch.tensor([tuple(s["mask"].shape) for s in samples]),
        "name": [s["name"] for s in samples],
    }


def normalize(images: torch.Tensor) -> torch.Tensor:
    """uint8 (N,3,H,W) -> float32 normalised with ImageNet mean/std (done on the device, after transfer)."""
    mean = torch.tensor(IMAGENET_MEAN, device=images.device).view(1, 3, 1, 1) * 255
    std = torch.tensor(IMAGENET_STD, device=images.device).view(1, 3, 1, 1) * 255
    return (images.float() - mean) / std
