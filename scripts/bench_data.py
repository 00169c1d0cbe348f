"""Benchmark the data pipelines per worker on VOC-like data: ours vs a reference loader, OpenCV vs tv2.

    python scripts/bench_data.py [--num-images 64] [--crop 512] [--reps 2] [--quick] [--target 500]

Generates 500x375 JPEGs with palette masks (21 classes, 255 borders) in a temporary folder, then
times, in this one process with one thread (a DataLoader worker's budget), file -> sample ready
for the GPU (decode, label check, augmentation, tensors) for:
  crop          ours, `augment=crop` on OpenCV (resize, cat_max_ratio crop, flip, photometric LUTs)
  letterbox     ours, `augment=letterbox` on OpenCV (letterbox + aspect and HSV jitter on uint8)
  crop-tv2      the same crop on torchvision.transforms.v2 functionals with tv_tensors
  letterbox-ref the VOC loader this project started from, as written: PIL letterbox + OpenCV HSV
                LUT + float64 /255 + float64 one-hot labels
and prints samples/s per worker, the ratio to letterbox-ref, and the workers needed for --target
img/s.
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from src.data.augment import LetterboxJitter, RandomResizeCrop  # noqa: E402
from src.data.dataset import SegmentationDataset  # noqa: E402
from src.data.palette import save_palette_png  # noqa: E402
from src.data.photometric import PhotometricDistortion  # noqa: E402
from src.data.transforms import randint, uniform  # noqa: E402

NUM_CLASSES = 21


def make_voc_like(folder: Path, count: int, seed: int = 0) -> list[tuple[Path, Path]]:
    """Write `count` 500x375 JPEGs (textured) and palette PNG masks of 1-4 polygons with 255 borders."""
    rng = np.random.default_rng(seed)
    pairs = []
    for i in range(count):
        h, w = (375, 500) if i % 4 else (500, 375)  # VOC mixes landscape and portrait
        image = cv2.resize(rng.uniform(0, 255, (h // 25, w // 25, 3)).astype(np.float32), (w, h))
        image += rng.normal(0, 12, image.shape)
        mask = np.zeros((h, w), np.uint8)
        for _ in range(int(rng.integers(1, 5))):
            points = rng.uniform((0, 0), (w, h), (int(rng.integers(3, 7)), 2)).astype(np.int32)
            cls = int(rng.integers(1, NUM_CLASSES))
            cv2.fillPoly(mask, [points], cls)
            cv2.polylines(mask, [points], True, 255, 3)
            cv2.fillPoly(image, [points], rng.uniform(0, 255, 3).tolist())
        paths = folder / f"{i:05d}.jpg", folder / f"{i:05d}.png"
        Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(paths[0], quality=90)
        save_palette_png(paths[1], mask)
        pairs.append(paths)
    return pairs


class ReferencePipeline:
    """`UnetDataset.__getitem__` (train=True) of the VOC loader this project started from, as written."""

    def __init__(self, pairs: list[tuple[Path, Path]], size: int) -> None:
        self.pairs, self.input_shape = pairs, (size, size)

    def __len__(self) -> int:
        return len(self.pairs)

    @staticmethod
    def rand(a: float = 0.0, b: float = 1.0) -> float:
        return np.random.rand() * (b - a) + a

    def get_random_data(self, image, label, jitter=0.3, hue=0.1, sat=0.7, val=0.3):  # noqa: ANN001
        image = image.convert("RGB")
        label = Image.fromarray(np.array(label))
        iw, ih = image.size
        h, w = self.input_shape
        new_ar = iw / ih * self.rand(1 - jitter, 1 + jitter) / self.rand(1 - jitter, 1 + jitter)
        scale = self.rand(0.25, 2)
        if new_ar < 1:
            nh = int(scale * h)
            nw = int(nh * new_ar)
        else:
            nw = int(scale * w)
            nh = int(nw / new_ar)
        image = image.resize((nw, nh), Image.BICUBIC)
        label = label.resize((nw, nh), Image.NEAREST)
        if self.rand() < 0.5:
            image = image.transpose(Image.FLIP_LEFT_RIGHT)
            label = label.transpose(Image.FLIP_LEFT_RIGHT)
        dx, dy = int(self.rand(0, w - nw)), int(self.rand(0, h - nh))
        new_image = Image.new("RGB", (w, h), (128, 128, 128))
        new_label = Image.new("L", (w, h), (0))
        new_image.paste(image, (dx, dy))
        new_label.paste(label, (dx, dy))
        image_data = np.array(new_image, np.uint8)
        r = np.random.uniform(-1, 1, 3) * [hue, sat, val] + 1
        hue, sat, val = cv2.split(cv2.cvtColor(image_data, cv2.COLOR_RGB2HSV))
        x = np.arange(0, 256, dtype=r.dtype)
        lut_hue = ((x * r[0]) % 180).astype(np.uint8)
        lut_sat = np.clip(x * r[1], 0, 255).astype(np.uint8)
        lut_val = np.clip(x * r[2], 0, 255).astype(np.uint8)
        image_data = cv2.merge(
            (cv2.LUT(hue, lut_hue), cv2.LUT(sat, lut_sat), cv2.LUT(val, lut_val))
        )
        return cv2.cvtColor(image_data, cv2.COLOR_HSV2RGB), new_label

    def __getitem__(self, index: int):  # noqa: ANN204
        jpg, png = (Image.open(p) for p in self.pairs[index])
        jpg, png = self.get_random_data(jpg, png)
        jpg = np.transpose(np.array(jpg, np.float64) / 255.0, [2, 0, 1])
        png = np.array(png)
        png[png >= NUM_CLASSES] = NUM_CLASSES
        seg_labels = np.eye(NUM_CLASSES + 1)[png.reshape([-1])]
        seg_labels = seg_labels.reshape((*self.input_shape, NUM_CLASSES + 1))
        return jpg, png, seg_labels


class TorchvisionCrop:
    """The same `crop` on torchvision.transforms.v2 functionals and tv_tensors (decode with torchvision.io)."""

    def __init__(self, pairs: list[tuple[Path, Path]], size: int) -> None:
        from torchvision import tv_tensors

        self.pairs, self.size, self.tv_tensors = pairs, size, tv_tensors

    def __len__(self) -> int:
        return len(self.pairs)

    def _photometric(self, image: torch.Tensor) -> torch.Tensor:
        from torchvision.transforms.v2 import functional as F

        if randint(0, 1):
            image = F.adjust_brightness(
                image, 1 + uniform(-32, 32) / 255
            )  # nearest tv2 op to +delta
        if randint(0, 1):
            image = F.adjust_contrast(image, uniform(0.5, 1.5))
        if randint(0, 1):
            image = F.adjust_saturation(image, uniform(0.5, 1.5))
        if randint(0, 1):
            image = F.adjust_hue(image, randint(-18, 18) / 180)
        return image

    def __getitem__(self, index: int) -> dict:
        from torchvision.io import decode_jpeg, read_file
        from torchvision.transforms.v2 import functional as F

        image_path, mask_path = self.pairs[index]
        image = self.tv_tensors.Image(decode_jpeg(read_file(str(image_path))))
        with Image.open(mask_path) as m:
            mask = self.tv_tensors.Mask(torch.from_numpy(np.array(m)))
        short = round(self.size * uniform(0.5, 2.0))
        image, mask = (
            F.resize(image, [short]),
            F.resize(mask, [short], interpolation=F.InterpolationMode.NEAREST),
        )
        h, w = mask.shape[-2:]
        pad = [0, 0, max(self.size - w, 0), max(self.size - h, 0)]
        image, mask = F.pad(image, pad, fill=124), F.pad(mask, pad, fill=255)
        for attempt in range(11):
            top, left = (
                randint(0, mask.shape[-2] - self.size),
                randint(0, mask.shape[-1] - self.size),
            )
            window = F.crop(mask, top, left, self.size, self.size)
            counts = torch.bincount(window.flatten().long(), minlength=256)[:255]
            if attempt == 10 or (counts > 0).sum() > 1 and counts.max() < 0.75 * counts.sum():
                break
        image = F.crop(image, top, left, self.size, self.size)
        if uniform(0, 1) < 0.5:
            image, window = F.horizontal_flip(image), F.horizontal_flip(window)
        return {"image": self._photometric(image), "mask": window}


def throughput(dataset: Callable | object, reps: int) -> float:
    """Samples per second over `reps` passes of dataset[i] (one warm-up sample first)."""
    dataset[0]
    start = time.perf_counter()
    for _ in range(reps):
        for i in range(len(dataset)):
            dataset[i]
    return reps * len(dataset) / (time.perf_counter() - start)


def main() -> None:
    """Generate data, time each pipeline, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num-images", type=int, default=64)
    parser.add_argument("--crop", type=int, default=512, help="crop / input size (VOC recipe: 512)")
    parser.add_argument("--reps", type=int, default=2, help="passes over the images per pipeline")
    parser.add_argument("--target", type=float, default=500.0, help="images/s the GPU consumes")
    parser.add_argument("--quick", action="store_true", help="16 images, 1 pass (a smoke run)")
    args = parser.parse_args()
    if args.quick:
        args.num_images, args.reps = 16, 1
    torch.set_num_threads(1)
    cv2.setNumThreads(1)  # a DataLoader worker's budget (the datamodule sets the same in workers)
    torch.manual_seed(0)
    np.random.seed(0)
    size = args.crop
    with tempfile.TemporaryDirectory(prefix="seglab-bench-") as tmp:
        pairs = make_voc_like(Path(tmp), args.num_images)

        def ours(transform: Callable) -> SegmentationDataset:
            return SegmentationDataset(pairs, NUM_CLASSES, 255, transform)

        pipelines = {
            "letterbox-ref": ReferencePipeline(pairs, size),
            "crop": ours(RandomResizeCrop(size, size, photometric=PhotometricDistortion())),
            "letterbox": ours(LetterboxJitter(size)),
            "crop-tv2": TorchvisionCrop(pairs, size),
        }
        rates = {name: throughput(p, args.reps) for name, p in pipelines.items()}
    base = rates["letterbox-ref"]
    print(
        f"{args.num_images} VOC-like 500x375 images, {size}x{size} output, {args.reps} pass(es), 1 thread"
    )
    print(
        f"{'pipeline':<13} {'samples/s/worker':>17} {'vs letterbox-ref':>17} {'workers for ' + str(int(args.target)) + '/s':>18}"
    )
    for name, rate in rates.items():
        print(
            f"{name:<13} {rate:>17.1f} {rate / base:>16.2f}x {math.ceil(args.target / rate):>18d}"
        )


if __name__ == "__main__":
    main()
