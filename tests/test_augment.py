"""Augmentation invariants over many random draws, validation padding, and reproducible batches."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from PIL import Image

from src.data import augment as augment_module
from src.data.augment import LetterboxJitter, NoAugment, RandomResizeCrop
from src.data.folder import FolderDataModule
from src.data.photometric import PhotometricDistortion, hsv_jitter
from src.data.transforms import MEAN_RGB_UINT8, pad_collate, unpad
from src.metrics import confusion_matrix
from tests.conftest import compose_config
from tests.helpers.toy_data import CLASS_COLOURS, IGNORE_COLOUR, toy_pair, write_folder

Pair = tuple[np.ndarray, np.ndarray]
NUM_CLASSES = 5
DRAWS = 150


def draws(seed: int = 0) -> list[Pair]:
    """Toy pairs of assorted sizes, some smaller than the crops below."""
    rng = np.random.default_rng(seed)
    return [
        toy_pair(int(rng.integers(16, 90)), int(rng.integers(16, 90)), NUM_CLASSES, seed=i)
        for i in range(DRAWS)
    ]


# For the alignment check, labels carry a flag: EDGE marks source pixels within 1 px of another
# label, whose colour bilinear resampling may blend into the image. IGNORE (not 255) leaves the
# flag bit free. The flag rides through the transform with the label, so the check knows which
# output pixels come from a blend-free neighbourhood of the source.
EDGE, IGNORE = 128, 100


def flagged_draws() -> list[Pair]:
    """Toy pairs (ignore label IGNORE) whose mask has EDGE set on source pixels near a label edge."""
    rng = np.random.default_rng(0)
    out = []
    for i in range(DRAWS):
        image, mask = toy_pair(
            int(rng.integers(16, 90)),
            int(rng.integers(16, 90)),
            NUM_CLASSES,
            seed=i,
            ignore_index=IGNORE,
        )
        kernel = np.ones((3, 3), np.uint8)
        edge = cv2.erode(mask, kernel, borderType=cv2.BORDER_REPLICATE) != cv2.dilate(
            mask, kernel, borderType=cv2.BORDER_REPLICATE
        )
        out.append((image, mask | (EDGE * edge).astype(np.uint8)))
    return out


def misaligned(image: np.ndarray, flagged: np.ndarray, fills: list[tuple[int, int, int]]) -> int:
    """Output pixels from blend-free source neighbourhoods whose colour disagrees with their label.

    Labelled pixels must show their class colour; ignored ones the ignore colour or a padding fill.
    """

    def close(colours: np.ndarray) -> np.ndarray:
        return np.abs(image.astype(int) - np.asarray(colours, int)).max(-1) <= 3

    mask, checked = flagged & (255 - EDGE), (flagged & EDGE) == 0
    labelled = mask < NUM_CLASSES
    labelled_ok = labelled & close(CLASS_COLOURS[np.where(labelled, mask, 0)])
    ignored_ok = (mask == IGNORE) & (
        close(IGNORE_COLOUR) | np.any([close(f) for f in fills], axis=0)
    )
    return int((checked & ~(labelled_ok | ignored_ok)).sum())


PRESETS: dict[str, Callable[[int], Callable[[np.ndarray, np.ndarray], Pair]]] = {
    "crop": lambda ignore: RandomResizeCrop(48, 48, photometric=False, ignore_index=ignore),
    "crop_cat1": lambda ignore: RandomResizeCrop(
        48, 40, cat_max_ratio=1.0, photometric=False, ignore_index=ignore
    ),
    "letterbox": lambda ignore: LetterboxJitter(48, hue=0, sat=0, val=0, ignore_index=ignore),
    "none": lambda ignore: NoAugment(),
}
FILLS = [MEAN_RGB_UINT8, (128, 128, 128)]


@pytest.mark.parametrize("preset", PRESETS)
def test_mask_values_stay_within_the_original_ones_plus_ignore_index(preset: str) -> None:
    transform = PRESETS[preset](255)
    torch.manual_seed(0)
    for image, mask in draws():
        out_image, out_mask = transform(image, mask)
        assert out_image.dtype == np.uint8 and out_mask.dtype == np.uint8
        assert out_image.shape[:2] == out_mask.shape
        assert set(np.unique(out_mask)) <= set(np.unique(mask)) | {255}


@pytest.mark.parametrize("preset", PRESETS)
def test_image_and_mask_stay_aligned(preset: str) -> None:
    transform = PRESETS[preset](IGNORE)
    torch.manual_seed(0)
    checked = total = 0
    for image, flagged in flagged_draws():
        out_image, out_flagged = transform(image, flagged)
        assert set(np.unique(out_flagged)) <= set(np.unique(flagged)) | {IGNORE}
        assert misaligned(out_image, out_flagged, FILLS) == 0
        checked, total = checked + ((out_flagged & EDGE) == 0).sum(), total + out_flagged.size
    assert checked > 0.4 * total  # most pixels were checked, not a few


@pytest.mark.parametrize(
    ("name", "kind"),
    [("crop", RandomResizeCrop), ("letterbox", LetterboxJitter), ("none", NoAugment)],
)
def test_each_preset_is_chosen_by_its_name(name: str, kind: type, tmp_path: Path) -> None:
    cfg = compose_config("train", [f"data/augment={name}"], tmp_path)
    assert type(instantiate(cfg.data.augment)) is kind

def test_the_alignment_check_catches_a_flip_of_the_image_alone() -> None:
    crop = RandomResizeCrop(48, 48, photometric=False, hflip_prob=0.0, ignore_index=IGNORE)

    def broken(image: np.ndarray, mask: np.ndarray) -> Pair:
        image, mask = crop(image, mask)
        return np.ascontiguousarray(image[:, ::-1]), mask

    torch.manual_seed(0)
    assert sum(misaligned(*broken(*pair), FILLS) for pair in flagged_draws()) > 1000


@pytest.mark.parametrize("preset", ["crop", "letterbox"])
def test_padding_is_ignore_index_never_background(preset: str) -> None:
    image, mask = toy_pair(20, 24, NUM_CLASSES, seed=1)
    if preset == "crop":  # short side stays 20 < 48: the crop is padded bottom/right
        transform = RandomResizeCrop(
            48, 20, scale_range=(1.0, 1.0), hflip_prob=0.0, photometric=False
        )
        out_image, out_mask = transform(image, mask)
        assert np.array_equal(out_mask[:20, :24], mask)
        assert (out_mask[20:] == 255).all() and (out_mask[:, 24:] == 255).all()
        assert (out_image[20:] == MEAN_RGB_UINT8).all()
    else:  # long side 0.25 x 48 = 12: a 12x10 image on the grey canvas, the rest is ignored
        transform = LetterboxJitter(48, scale_range=(0.25, 0.25), jitter=0.0, hue=0, sat=0, val=0)
        out_image, out_mask = transform(image, mask)
        ys, xs = np.nonzero(out_mask != 255)
        top, left = ys.min(), xs.min()
        assert ys.max() - top < 10 and xs.max() - left < 12
        outside = np.ones(out_mask.shape, bool)
        outside[top : top + 10, left : left + 12] = False
        assert (out_mask[outside] == 255).all() and (out_image[outside] == 128).all()


def test_photometric_changes_the_image_only() -> None:
    geometry, coloured = (
        RandomResizeCrop(48, 48, photometric=False),
        RandomResizeCrop(48, 48, photometric=True),
    )
    changed = 0
    for k, (image, mask) in enumerate(draws()[:40]):
        torch.manual_seed(k)
        plain = geometry(image, mask)
        torch.manual_seed(k)
        jittered = coloured(image, mask)
        assert np.array_equal(plain[1], jittered[1])  # geometry draws come first: same crop
        changed += not np.array_equal(plain[0], jittered[0])
    assert changed > 20


def test_cat_max_ratio_redraws_crops_that_one_class_fills() -> None:
    mask = np.zeros((200, 200), np.uint8)
    mask[150:190, 150:190] = 1  # a small object in a large background
    image = CLASS_COLOURS[mask]

    def mixed_share(ratio: float) -> float:
        crop = RandomResizeCrop(
            64, 200, scale_range=(1.0, 1.0), cat_max_ratio=ratio, photometric=False
        )
        torch.manual_seed(0)
        windows = [crop(image, mask)[1] for _ in range(200)]
        return float(
            np.mean(
                [np.bincount(w.ravel(), minlength=2)[:2].max() / w.size < 0.75 for w in windows]
            )
        )

    assert mixed_share(0.75) > 2 * mixed_share(1.0)


def scripted_uniform(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Record every value LetterboxJitter draws."""
    drawn: list[float] = []
    real = augment_module.uniform

    def recording(low: float, high: float) -> float:
        drawn.append(real(low, high))
        return drawn[-1]

    monkeypatch.setattr(augment_module, "uniform", recording)
    return drawn


def reference_letterbox(mask: np.ndarray, size: int, drawn: list[float]) -> np.ndarray:
    """`get_random_data`'s geometry on PIL with the same draws, mask canvas 255 instead of 0.

    As in the VOC loader this project started from (the `letterbox` preset's reference).
    """
    ih, iw = mask.shape
    new_ar = iw / ih * drawn[0] / drawn[1]
    if new_ar < 1:
        nh = int(drawn[2] * size)
        nw = int(nh * new_ar)
    else:
        nw = int(drawn[2] * size)
        nh = int(nw / new_ar)
    label = Image.fromarray(mask).resize((nw, nh), Image.NEAREST)
    if drawn[3] < 0.5:
        label = label.transpose(Image.FLIP_LEFT_RIGHT)
    canvas = Image.new("L", (size, size), 255)
    canvas.paste(label, (int(drawn[4]), int(drawn[5])))
    return np.array(canvas)


def test_letterbox_preset_places_the_mask_as_its_reference_does(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    transform = LetterboxJitter(48, hue=0, sat=0, val=0)
    drawn = scripted_uniform(monkeypatch)
    torch.manual_seed(0)
    agreement = []
    for image, mask in draws()[:60]:
        drawn.clear()
        ours = transform(image, mask)[1]
        agreement.append(np.mean(ours == reference_letterbox(mask, 48, drawn)))
    # nearest-neighbour rounding differs between PIL and OpenCV on a few pixels per image
    assert min(agreement) > 0.9 and np.mean(agreement) > 0.97


def test_hsv_jitter_reproduces_the_reference_loader_luts() -> None:
    image = toy_pair(40, 48, NUM_CLASSES, seed=3)[0]
    image = cv2.GaussianBlur(image, (7, 7), 0)  # many distinct colours
    torch.manual_seed(5)
    ours = hsv_jitter(image, 0.1, 0.7, 0.3)
    torch.manual_seed(5)
    r = np.array([float(torch.empty(()).uniform_(-1, 1)) for _ in range(3)]) * [0.1, 0.7, 0.3] + 1
    hue, sat, val = cv2.split(cv2.cvtColor(image, cv2.COLOR_RGB2HSV))
    x = np.arange(0, 256, dtype=r.dtype)
    luts = (
        ((x * r[0]) % 180).astype(np.uint8),
        np.clip(x * r[1], 0, 255).astype(np.uint8),
        np.clip(x * r[2], 0, 255).astype(np.uint8),
    )
    merged = cv2.merge([cv2.LUT(c, lut) for c, lut in zip((hue, sat, val), luts, strict=True)])
    assert np.array_equal(ours, cv2.cvtColor(merged, cv2.COLOR_HSV2RGB))


def test_photometric_brightness_stays_within_its_delta() -> None:
    distort = PhotometricDistortion(
        brightness_delta=32, contrast_range=(1.0, 1.0), saturation_range=(1.0, 1.0), hue_delta=0
    )
    grey = np.full((8, 8, 3), 100, np.uint8)
    torch.manual_seed(0)
    outs = [distort(grey) for _ in range(50)]
    levels = {int(o[0, 0, 0]) for o in outs}
    assert all((o == o[0, 0, 0]).all() for o in outs)
    assert min(levels) >= 68 and max(levels) <= 132 and len(levels) > 5 and 100 in levels


def samples(seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(4):
        image, mask = toy_pair(
            int(rng.integers(20, 70)), int(rng.integers(20, 70)), NUM_CLASSES, seed=i
        )
        out.append(
            {
                "image": torch.from_numpy(image.transpose(2, 0, 1).copy()),
                "mask": torch.from_numpy(mask),
                "name": str(i),
            }
        )
    return out


def test_validation_padding_is_deterministic_and_invertible() -> None:
    batch, again = pad_collate(samples(), multiple=32), pad_collate(samples(), multiple=32)
    assert all(torch.equal(batch[k], again[k]) for k in ("image", "mask", "sizes"))
    assert batch["image"].shape[-1] % 32 == 0 and batch["image"].shape[-2] % 32 == 0
    for s, image, mask, size in zip(
        samples(),
        unpad(batch["image"], batch["sizes"]),
        unpad(batch["mask"], batch["sizes"]),
        batch["sizes"],
        strict=True,
    ):
        assert torch.equal(image, s["image"]) and torch.equal(mask, s["mask"])
        assert tuple(size.tolist()) == tuple(s["mask"].shape)
        padded = batch["mask"][int(s["name"])].clone()
        padded[: size[0], : size[1]] = 0
        assert set(padded.unique().tolist()) <= {
            0,
            255,
        }  # everything outside the sample is ignore_index


def test_metric_on_padded_batch_equals_metric_at_original_resolution() -> None:
    batch = pad_collate(samples(), multiple=32)
    torch.manual_seed(0)
    pred = torch.randint(
        0, NUM_CLASSES, batch["mask"].shape
    )  # whatever the model says in the padding
    padded = confusion_matrix(pred, batch["mask"].long(), NUM_CLASSES, 255)
    original = sum(
        confusion_matrix(p, m.long(), NUM_CLASSES, 255)
        for p, m in zip(
            unpad(pred, batch["sizes"]), unpad(batch["mask"], batch["sizes"]), strict=True
        )
    )
    assert torch.equal(padded, original)


def epoch(
    loader: torch.utils.data.DataLoader,
) -> list[tuple[torch.Tensor, torch.Tensor, list[str]]]:
    return [(b["image"].clone(), b["mask"].clone(), list(b["name"])) for b in loader]


def same(a: list, b: list) -> bool:
    return len(a) == len(b) and all(
        torch.equal(x[0], y[0]) and torch.equal(x[1], y[1]) and x[2] == y[2]
        for x, y in zip(a, b, strict=True)
    )


@pytest.mark.parametrize("num_workers", [0, 2])
def test_the_same_seed_gives_the_same_batches_and_epochs_differ(
    tmp_path: Path, num_workers: int, monkeypatch
) -> None:
    if num_workers:
        monkeypatch.setenv("PL_SEED_WORKERS", "1")  # what seed_everything(workers=True) sets
    write_folder(
        tmp_path,
        [f"s{i}" for i in range(8)],
        size=(56, 64),
        num_classes=NUM_CLASSES,
        splits={"train": [f"s{i}" for i in range(6)], "val": ["s6", "s7"]},
    )

    def two_epochs(seed: int) -> tuple[list, list]:
        dm = FolderDataModule(
            root=str(tmp_path),
            num_classes=NUM_CLASSES,
            pad_multiple=32,
            batch_size=3,
            num_workers=num_workers,
            augment=RandomResizeCrop(32, 32),
        )
        dm.setup()
        torch.manual_seed(seed)
        loader = dm.train_dataloader()
        return epoch(loader), epoch(loader)

    first, second = two_epochs(3)
    again = two_epochs(3)
    assert same(first, again[0]) and same(second, again[1])
    assert not same(first, second)
    assert not same(first, two_epochs(4)[0])
