"""Joint image/mask primitives on uint8 numpy arrays, the collate that pads batches, and normalise.

Random draws use torch's RNG: the DataLoader reseeds it per worker and per epoch (and Lightning's
`seed_everything(workers=True)` derives those seeds from `seed`), so augmentations differ across
workers and epochs and repeat for a given seed. numpy's global RNG is never used here.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch

from src.utils.errors import UserError

# ImageNet statistics (torchvision's backbones were trained with them).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# The mean of the Caffe VGG16 model (BGR, 0-255) as the FCN reference subtracts it.
CAFFE_BGR_MEAN = (104.00699, 116.66877, 122.67892)
NORMALIZATIONS = ("imagenet", "caffe_bgr")
# Padding images with the mean colour makes padded pixels ~0 after either normalisation.
MEAN_RGB_UINT8 = tuple(round(255 * m) for m in IMAGENET_MEAN)

Pair = tuple[np.ndarray, np.ndarray]


def uniform(low: float, high: float) -> float:
    """One draw from U(low, high) on torch's RNG."""
    return float(torch.empty(()).uniform_(low, high))


def randint(low: int, high: int) -> int:
    """One integer drawn uniformly from [low, high] (inclusive) on torch's RNG."""
    return int(torch.randint(low, high + 1, ()))


def resize_pair(
    image: np.ndarray,
    mask: np.ndarray,
    width: int,
    height: int,
    interpolation: int = cv2.INTER_LINEAR,
) -> Pair:
    """Resize jointly to (width, height): the image with `interpolation`, the mask with nearest.

    NEAREST_EXACT samples at pixel centres like the bilinear image; plain INTER_NEAREST is shifted.
    """
    size = (max(1, int(width)), max(1, int(height)))
    return cv2.resize(image, size, interpolation=interpolation), cv2.resize(
        mask, size, interpolation=cv2.INTER_NEAREST_EXACT
    )


def pad_to(image: np.ndarray, mask: np.ndarray, height: int, width: int, ignore_index: int) -> Pair:
    """Pad bottom/right to at least (height, width): image with the mean colour, mask with ignore_index."""
    pad_h, pad_w = max(height - mask.shape[0], 0), max(width - mask.shape[1], 0)
    if pad_h == 0 and pad_w == 0:
        return image, mask
    image = cv2.copyMakeBorder(image, 0, pad_h, 0, pad_w, cv2.BORDER_CONSTANT, value=MEAN_RGB_UINT8)
    mask = cv2.copyMakeBorder(mask, 0, pad_h, 0, pad_w, cv2.BORDER_CONSTANT, value=ignore_index)
    return image, mask


def hflip(image: np.ndarray, mask: np.ndarray) -> Pair:
    """Mirror both left-right."""
    return image[:, ::-1], mask[:, ::-1]


def label_counts(mask: np.ndarray) -> np.ndarray:
    """Pixel count of each value 0..255 in a uint8 mask, (256,) int64 (cv2.calcHist: ~7x np.bincount)."""
    if mask.size == 0 or mask.size >= 1 << 24:  # calcHist counts in float32: exact below 2**24
        return np.bincount(mask.ravel(), minlength=256).astype(np.int64)
    return cv2.calcHist([mask], [0], None, [256], [0, 256]).ravel().astype(np.int64)


def dominant_ratio(mask: np.ndarray, ignore_index: int) -> float:
    """Share of the most frequent class among the labelled pixels; 1.0 when fewer than two classes."""
    counts = label_counts(mask)
    counts[ignore_index] = 0
    if np.count_nonzero(counts) < 2:
        return 1.0
    return float(counts.max() / counts.sum())


def padded_size(height: int, width: int, multiple: int) -> tuple[int, int]:
    """(H, W) rounded up to a multiple (the validation batches' padding)."""
    return -(-height // multiple) * multiple, -(-width // multiple) * multiple


def pad_collate(samples: list[dict], ignore_index: int = 255, *, multiple: int) -> dict:
    """Stack samples, padding each (bottom/right) to the batch's largest size rounded up to `multiple`.

    Padded mask pixels are ignore_index, so losses and metrics on a padded batch equal those at the
    original resolution; `sizes` records each sample's original (H, W) to undo the padding (`unpad`).
    `skipped` sums the bad samples the dataset passed over (data.skip_bad).
    """
    height, width = padded_size(
        max(s["mask"].shape[0] for s in samples), max(s["mask"].shape[1] for s in samples), multiple
    )
    images = torch.empty((len(samples), 3, height, width), dtype=torch.uint8)
    images[:] = torch.tensor(MEAN_RGB_UINT8, dtype=torch.uint8).view(1, 3, 1, 1)
    masks = torch.full((len(samples), height, width), ignore_index, dtype=torch.uint8)
    for i, s in enumerate(samples):
        h, w = s["mask"].shape
        images[i, :, :h, :w] = s["image"]
        masks[i, :h, :w] = s["mask"]
    batch = {
        "image": images,
        "mask": masks,
        "sizes": torch.tensor([tuple(s["mask"].shape) for s in samples]),
        "name": [s["name"] for s in samples],
    }
    skipped = sum(int(s.get("skipped", 0)) for s in samples)
    if skipped:
        batch["skipped"] = skipped
    return batch


def unpad(batch: torch.Tensor, sizes: torch.Tensor) -> list[torch.Tensor]:
    """Undo `pad_collate` on a (N, ..., H, W) tensor (a prediction, a mask): each sample at its size."""
    return [
        item[..., : int(h), : int(w)] for item, (h, w) in zip(batch, sizes.tolist(), strict=True)
    ]


def check_normalization(convention: str) -> str:
    """Return `convention` if seglab knows it, else raise naming `data.normalize`."""
    if convention not in NORMALIZATIONS:
        raise UserError(f"data.normalize={convention!r}: expected one of {list(NORMALIZATIONS)}")
    return convention


def _statistics(convention: str, device: torch.device) -> tuple[list[int], torch.Tensor, torch.Tensor]:
    """Channel order (from RGB), mean and std per channel on the 0-255 scale, shaped (1, 3, 1, 1)."""
    if check_normalization(convention) == "caffe_bgr":
        order, mean, std = [2, 1, 0], CAFFE_BGR_MEAN, (1.0, 1.0, 1.0)
    else:
        order = [0, 1, 2]
        mean, std = tuple(255 * m for m in IMAGENET_MEAN), tuple(255 * s for s in IMAGENET_STD)
    shape = (1, 3, 1, 1)
    return order, torch.tensor(mean, device=device).view(shape), torch.tensor(std, device=device).view(shape)


def normalize(images: torch.Tensor, convention: str = "imagenet") -> torch.Tensor:
    """uint8 RGB (N,3,H,W) -> float32 model input (done on the device, after transfer).

    `imagenet`: RGB scaled to 0-1 with ImageNet's mean/std (torchvision's weights). `caffe_bgr`: BGR
    on the 0-255 scale minus the Caffe VGG mean (weights converted from Caffe; the FCN reference's
    1e-10 learning rates assume this scale).
    """
    order, mean, std = _statistics(convention, images.device)
    if order != [0, 1, 2]:
        images = images[:, order]
    return (images.float() - mean) / std


def denormalize(image: torch.Tensor, convention: str = "imagenet") -> np.ndarray:
    """A normalised (3, H, W) tensor back to RGB uint8 (H, W, 3), undoing `normalize`."""
    order, mean, std = _statistics(convention, image.device)
    pixels = (image.detach().float().unsqueeze(0) * std + mean)[:, order]  # the swap is its own inverse
    return pixels[0].round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).cpu().numpy()
