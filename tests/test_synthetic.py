"""The embedded synthetic dataset: VOC layout, palette masks with 255 borders, determinism, reuse."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from src.data import synthetic
from src.data.palette import colorize, save_palette_png, voc_palette
from src.data.synthetic import (
    GENERATOR_VERSION,
    STAMP_NAME,
    SYNTHETIC_CLASSES,
    SyntheticSpec,
    ensure_synthetic_voc,
    generate_synthetic_voc,
    render_sample,
)
from src.utils.errors import UserError

SMALL = SyntheticSpec(num_train=6, num_val=3)


@pytest.fixture(scope="module")
def voc(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One small generated dataset shared by the read-only tests."""
    return generate_synthetic_voc(tmp_path_factory.mktemp("synthetic"), SMALL)


def files_under(folder: Path) -> dict[str, bytes]:
    """Map every file's relative path under `folder` to its bytes."""
    return {
        str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


def split_ids(voc: Path, split: str) -> list[str]:
    """Read a split list."""
    return (voc / "ImageSets" / "Segmentation" / f"{split}.txt").read_text().split()


def read_mask(voc: Path, sample_id: str) -> np.ndarray:
    """Decode a SegmentationClass PNG to its indices."""
    return np.array(Image.open(voc / "SegmentationClass" / f"{sample_id}.png"))


def test_voc_palette_matches_the_devkit_colormap() -> None:
    """The bit-interleaving colormap of VOCdevkit's labelcolormap.m, checked at known entries."""
    palette = voc_palette()
    assert palette.shape == (256, 3) and palette.dtype == np.uint8
    known = {0: (0, 0, 0), 1: (128, 0, 0), 2: (0, 128, 0), 3: (128, 128, 0), 4: (0, 0, 128)}
    known |= {
        15: (192, 128, 128),
        20: (0, 64, 128),
        255: (224, 224, 192),
    }  # person, tvmonitor, void
    for index, colour in known.items():
        assert tuple(palette[index]) == colour
    assert len({tuple(c) for c in palette}) == 256
    np.testing.assert_array_equal(voc_palette(21), palette[:21])


def test_colorize_and_palette_png_round_trip(tmp_path: Path) -> None:
    """A saved mask reads back as the same indices in "P" mode; colorize looks colours up."""
    mask = np.array([[0, 1, 2], [5, 255, 20]], dtype=np.uint8)
    save_palette_png(tmp_path / "m.png", mask)
    image = Image.open(tmp_path / "m.png")
    assert image.mode == "P"
    np.testing.assert_array_equal(np.array(image), mask)
    assert image.getpalette()[: 3 * 256] == voc_palette().reshape(-1).tolist()
    colours = colorize(mask)
    assert colours.shape == (2, 3, 3)
    assert tuple(colours[0, 1]) == (128, 0, 0) and tuple(colours[1, 1]) == (224, 224, 192)
    with pytest.raises(ValueError, match="only 6 colours"):
        colorize(mask, voc_palette(6))


def test_layout_matches_voc(voc: Path) -> None:
    """JPEGImages, SegmentationClass and the split lists name exactly the same samples."""
    train, val = split_ids(voc, "train"), split_ids(voc, "val")
    assert len(train) == SMALL.num_train and len(val) == SMALL.num_val
    assert not set(train) & set(val)
    assert split_ids(voc, "trainval") == train + val
    assert sorted(p.stem for p in (voc / "JPEGImages").glob("*.jpg")) == sorted(train + val)
    assert sorted(p.stem for p in (voc / "SegmentationClass").glob("*.png")) == sorted(train + val)
    stamp = json.loads((voc / STAMP_NAME).read_text())
    assert stamp["version"] == GENERATOR_VERSION and stamp["spec"]["num_train"] == SMALL.num_train


def test_images_and_masks_decode(voc: Path) -> None:
    """RGB JPEGs of varied, non-square sizes in range; "P" masks of the same size with VOC's palette."""
    sizes = set()
    for sample_id in split_ids(voc, "trainval"):
        image = Image.open(voc / "JPEGImages" / f"{sample_id}.jpg")
        mask = Image.open(voc / "SegmentationClass" / f"{sample_id}.png")
        assert image.format == "JPEG" and image.mode == "RGB"
        assert mask.mode == "P" and mask.size == image.size
        assert mask.getpalette()[: 3 * 256] == voc_palette().reshape(-1).tolist()
        assert all(SMALL.min_size <= side <= SMALL.max_size for side in image.size)
        values = set(np.unique(np.array(mask)).tolist())
        assert values <= set(range(len(SYNTHETIC_CLASSES))) | {255}
        assert 0 in values
        sizes.add(image.size)
    assert len(sizes) > 1 and any(w != h for w, h in sizes)


def test_every_object_is_bordered_by_255(voc: Path) -> None:
    """Each connected object region's outer ring is entirely void, as VOC's contours are."""
    kernel = np.ones((3, 3), np.uint8)
    regions = 0
    for sample_id in split_ids(voc, "trainval"):
        mask = read_mask(voc, sample_id)
        for cls in range(1, len(SYNTHETIC_CLASSES)):
            count, components = cv2.connectedComponents(
                (mask == cls).astype(np.uint8), connectivity=8
            )
            for k in range(1, count):
                region = (components == k).astype(np.uint8)
                ring = (
                    cv2.dilate(region, kernel, borderType=cv2.BORDER_CONSTANT, borderValue=0)
                    > region
                )
                assert ring.any() and np.all(mask[ring] == 255), (sample_id, cls)
                regions += 1
    assert regions >= SMALL.num_train  # every image holds at least one object


def test_border_band_straddles_every_boundary() -> None:
    """With border=2, every pixel next to a label change of the unbordered mask is void, and nothing else changes."""
    for index in range(4):
        _, plain = render_sample(replace(SMALL, border=0), "train", index)
        _, bordered = render_sample(SMALL, "train", index)
        assert 255 not in plain
        window_max = cv2.dilate(plain, np.ones((3, 3), np.uint8))
        window_min = cv2.erode(plain, np.ones((3, 3), np.uint8))
        changes = window_max != window_min  # both sides of every class boundary
        assert np.all(bordered[changes] == 255)
        kept = bordered != 255
        np.testing.assert_array_equal(bordered[kept], plain[kept])
        assert 0.0 < (~kept).mean() < 0.3


def test_classes_vary_across_the_set() -> None:
    """Several object classes appear, and samples differ from one another."""
    spec = SyntheticSpec(num_train=20, num_val=1)
    samples = [render_sample(spec, "train", i) for i in range(spec.num_train)]
    present = set().union(*(np.unique(mask).tolist() for _, mask in samples)) - {0, 255}
    assert present == set(range(1, len(SYNTHETIC_CLASSES)))
    first = samples[0][0]
    assert all(
        image.shape != first.shape or not np.array_equal(image, first) for image, _ in samples[1:]
    )


def test_colour_does_not_identify_the_class() -> None:
    """Objects of the same class get different colours; all classes share one colour distribution."""
    spec = SyntheticSpec(num_train=40, num_val=1, border=2)
    means: dict[int, list[np.ndarray]] = {}
    for i in range(spec.num_train):
        image, mask = render_sample(spec, "train", i)
        for cls in range(1, len(SYNTHETIC_CLASSES)):
            if (mask == cls).sum() > 50:
                means.setdefault(cls, []).append(image[mask == cls].mean(0))
    spreads = [np.std(np.array(m), axis=0).mean() for m in means.values() if len(m) >= 3]
    assert len(spreads) >= 3 and min(spreads) > 20  # a flat per-class colour would have spread ~0


def test_generation_is_deterministic(tmp_path: Path) -> None:
    """Same spec, two roots: byte-identical files; another seed: different images."""
    first = files_under(generate_synthetic_voc(tmp_path / "a", SMALL))
    second = files_under(generate_synthetic_voc(tmp_path / "b", SMALL))
    assert first.keys() == second.keys()
    assert all(first[name] == second[name] for name in first)
    other = files_under(generate_synthetic_voc(tmp_path / "c", replace(SMALL, seed=1)))
    assert other["JPEGImages/train_00000.jpg"] != first["JPEGImages/train_00000.jpg"]


def test_val_does_not_depend_on_the_train_count() -> None:
    """Per-image seeds include the split, so growing the train set leaves val untouched."""
    image, mask = render_sample(SMALL, "val", 1)
    other_image, other_mask = render_sample(replace(SMALL, num_train=50), "val", 1)
    np.testing.assert_array_equal(image, other_image)
    np.testing.assert_array_equal(mask, other_mask)


def test_ensure_reuses_then_regenerates_on_spec_change(tmp_path: Path) -> None:
    """An identical stamp means no write; a new spec replaces only the generator's files."""
    voc = ensure_synthetic_voc(tmp_path, SMALL)
    assert voc == tmp_path / "VOCdevkit" / "VOC2012"
    watched = [voc / STAMP_NAME, voc / "JPEGImages" / "train_00000.jpg"]
    before = [p.stat().st_mtime_ns for p in watched]
    (voc / "notes.txt").write_text("mine")
    (voc / "JPEGImages" / "mine.jpg").write_bytes(b"not ours")
    assert ensure_synthetic_voc(tmp_path, SMALL) == voc
    assert [p.stat().st_mtime_ns for p in watched] == before

    smaller = replace(SMALL, num_train=4, seed=3)
    ensure_synthetic_voc(tmp_path, smaller)
    assert json.loads((voc / STAMP_NAME).read_text())["spec"]["seed"] == 3
    assert split_ids(voc, "train") == [f"train_{i:05d}" for i in range(4)]
    assert not (voc / "JPEGImages" / "train_00005.jpg").exists()
    assert (voc / "notes.txt").read_text() == "mine"
    assert (voc / "JPEGImages" / "mine.jpg").read_bytes() == b"not ours"
    expected = files_under(generate_synthetic_voc(tmp_path / "fresh", smaller))
    regenerated = files_under(voc)
    assert all(regenerated[name] == data for name, data in expected.items())
    assert list((voc.parent).iterdir()) == [voc]  # the staging folder is gone


def test_refuses_a_folder_that_looks_like_a_real_dataset(tmp_path: Path) -> None:
    """An unstamped VOC2012 with JPEGImages is left alone, with an error naming it."""
    voc = tmp_path / "VOCdevkit" / "VOC2012"
    (voc / "JPEGImages").mkdir(parents=True)
    (voc / "JPEGImages" / "2007_000032.jpg").write_bytes(b"real")
    with pytest.raises(UserError, match=rf"{voc}.*no {STAMP_NAME}"):
        ensure_synthetic_voc(tmp_path, SMALL)
    assert [p.name for p in voc.rglob("*")] == ["JPEGImages", "2007_000032.jpg"]


def test_interrupted_generation_is_redone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A crash never leaves a stamp that vouches for wrong files, nor a folder that is then refused."""
    real_save, real_move = synthetic.save_palette_png, synthetic._move_files

    def failing_save(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(synthetic, "save_palette_png", failing_save)
    with pytest.raises(KeyboardInterrupt):
        ensure_synthetic_voc(tmp_path, SMALL)
    assert list((tmp_path / "VOCdevkit").iterdir()) == []  # nothing half-written is left

    monkeypatch.setattr(synthetic, "save_palette_png", real_save)
    voc = ensure_synthetic_voc(tmp_path, SMALL)
    monkeypatch.setattr(synthetic, "save_palette_png", failing_save)
    with pytest.raises(KeyboardInterrupt):
        ensure_synthetic_voc(tmp_path, replace(SMALL, seed=5))
    assert synthetic.synthetic_is_current(tmp_path, SMALL)  # drawing happens aside: old set intact

    def half_move(src: Path, dest: Path) -> None:
        moved = sorted((src / "JPEGImages").iterdir())[:2]
        for path in moved:
            path.replace(dest / "JPEGImages" / path.name)
        raise KeyboardInterrupt

    monkeypatch.setattr(synthetic, "save_palette_png", real_save)
    monkeypatch.setattr(synthetic, "_move_files", half_move)
    new_spec = replace(SMALL, seed=5)
    with pytest.raises(KeyboardInterrupt):
        ensure_synthetic_voc(tmp_path, new_spec)
    assert not synthetic.synthetic_is_current(tmp_path, SMALL)
    assert not synthetic.synthetic_is_current(tmp_path, new_spec)

    monkeypatch.setattr(synthetic, "_move_files", real_move)
    assert ensure_synthetic_voc(tmp_path, new_spec) == voc
    assert files_under(voc) == files_under(generate_synthetic_voc(tmp_path / "fresh", new_spec))


@pytest.mark.parametrize(
    ("field", "value"),
    [("num_train", 0), ("min_size", 8), ("max_size", 100), ("border", -1), ("seed", 1.5)],
)
def test_bad_spec_values_are_named(field: str, value: object) -> None:
    """A bad spec value raises a UserError naming the field."""
    with pytest.raises(UserError, match=field):
        SyntheticSpec(**{field: value})
