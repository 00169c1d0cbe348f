"""Class weights from training masks: hand-computed values, the cache, warnings and errors."""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from src.data.masks import MaskDecoder
from src.losses import class_weights as cw
from src.utils.errors import UserError
from src.utils.loss_config import composite_loss

NUM_CLASSES = 4  # class 3 never occurs
II = 255


def resolve_class_weights(*args, decode_mask=None, **kwargs):
    """`cw.resolve_class_weights` reading the masks as a DataModule's default decoder does."""
    num_classes, ignore_index = args[2], args[3]
    decoder = decode_mask or MaskDecoder(num_classes, ignore_index)
    return cw.resolve_class_weights(*args, decode_mask=decoder, **kwargs)


def _palette_png(path: Path, labels: np.ndarray) -> None:
    img = Image.fromarray(labels.astype(np.uint8), mode="P")
    img.putpalette([0, 0, 0, 128, 0, 0, 0, 128, 0, 128, 128, 0] + [224, 224, 192] * 252)
    img.save(path)


@pytest.fixture
def masks(tmp_path: Path) -> list[Path]:
    """Three 4x4 masks, written as VOC palette PNGs and as a grayscale PNG.

    a: 12 px of class 0, 4 px of class 1
    b: 8 px of class 0, 6 px of class 2, 2 px ignored
    c: 16 px of class 1
    """
    a = np.zeros((4, 4), np.uint8)
    a[0, :] = 1
    b = np.zeros((4, 4), np.uint8)
    b[2:, :3] = 2
    b[0, :2] = II
    c = np.ones((4, 4), np.uint8)
    assert (np.bincount(b.ravel(), minlength=256)[[0, 2, II]] == [8, 6, 2]).all()
    root = tmp_path / "SegmentationClass"
    root.mkdir()
    paths = [root / "a.png", root / "b.png", root / "c.png"]
    _palette_png(paths[0], a)
    _palette_png(paths[1], b)
    Image.fromarray(c, mode="L").save(paths[2])
    return paths


# Hand computation for the masks above (ignored pixels count nowhere):
#   pixels of class:            c0 = 12 + 8 = 20, c1 = 4 + 16 = 20, c2 = 6, c3 = 0; total 46
#   valid pixels of the images containing the class: c0 = 16 + 14 = 30, c1 = 16 + 16 = 32, c2 = 14
MEDIAN = [(5 / 8) / (2 / 3), (5 / 8) / (5 / 8), (5 / 8) / (3 / 7), 0.0]  # freq 2/3, 5/8, 3/7
INVERSE = [46 / (3 * 20), 46 / (3 * 20), 46 / (3 * 6), 0.0]
ENET = [
    1 / math.log(1.02 + 20 / 46),
    1 / math.log(1.02 + 20 / 46),
    1 / math.log(1.02 + 6 / 46),
    0.0,
]


@pytest.mark.parametrize(
    "method,expected",
    [("median_frequency", MEDIAN), ("auto", MEDIAN), ("inverse", INVERSE), ("enet", ENET)],
)
def test_methods_match_hand_computation(masks, tmp_path, method, expected) -> None:
    weights = resolve_class_weights(method, masks, NUM_CLASSES, II, tmp_path / "cache", "train")
    assert weights == pytest.approx(expected, rel=1e-12)


def test_inverse_weights_average_one_over_training_pixels(masks) -> None:
    weights = resolve_class_weights("inverse", masks, NUM_CLASSES, II, None, "train")
    assert (20 * weights[0] + 20 * weights[1] + 6 * weights[2]) / 46 == pytest.approx(1.0)


def test_cache_is_reused_and_masks_not_reread(masks, tmp_path, monkeypatch) -> None:
    reads: list[str] = []
    decoder = MaskDecoder(NUM_CLASSES, II)

    def counting_read(path):
        reads.append(Path(path).name)
        return decoder(path)

    cache = tmp_path / "cache"
    resolve = functools.partial(resolve_class_weights, decode_mask=counting_read)
    first = resolve("auto", masks, NUM_CLASSES, II, cache, "train")
    assert sorted(reads) == ["a.png", "b.png", "c.png"]
    files = list(cache.iterdir())
    assert [f.name for f in files] == ["class_weights-train-median_frequency.json"]
    assert json.loads(files[0].read_text())["weights"] == first

    second = resolve("auto", masks, NUM_CLASSES, II, cache, "train")
    assert second == first and len(reads) == 3  # nothing re-read

    resolve("enet", masks, NUM_CLASSES, II, cache, "train")  # another method
    resolve("auto", masks, NUM_CLASSES, II, cache, "trainaug")  # another split
    resolve("auto", masks, NUM_CLASSES + 1, II, cache, "train")  # another key
    assert len(reads) == 12


def test_cache_is_invalidated_when_a_mask_changes(masks, tmp_path, monkeypatch) -> None:
    cache = tmp_path / "cache"
    before = resolve_class_weights("auto", masks, NUM_CLASSES, II, cache, "train")
    reads = []
    decoder = MaskDecoder(NUM_CLASSES, II)
    labels = np.full((4, 4), 3, np.uint8)  # c.png now holds only class 3
    _palette_png(masks[2], labels)
    st = os.stat(masks[2])
    os.utime(masks[2], ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    after = resolve_class_weights(
        "auto", masks, NUM_CLASSES, II, cache, "train", decode_mask=lambda p: reads.append(p) or decoder(p)
    )
    assert len(reads) == 3 and after != before and after[3] > 0 and after[1] > 0


def test_table_is_logged_and_absent_classes_warned(masks, caplog) -> None:
    with caplog.at_level(logging.INFO, logger=cw.__name__):
        resolve_class_weights(
            "auto", masks, NUM_CLASSES, II, None, "train", class_names=["bg", "cat", "dog", "cow"]
        )
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "class weights (median_frequency" in text
    for name, w in zip(["bg", "cat", "dog", "cow"], MEDIAN, strict=True):
        assert re.search(rf"^\s+{name}\s+{w:.4f}$", text, re.MULTILINE), name
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "cow" in warnings[0].getMessage()


def test_stray_labels_are_ignored_with_a_warning(tmp_path, caplog) -> None:
    path = tmp_path / "m.png"
    labels = np.zeros((2, 4), np.uint8)
    labels[1] = [1, 1, 9, 9]  # 9 is neither a class nor ignore_index
    Image.fromarray(labels, mode="L").save(path)
    with caplog.at_level(logging.WARNING, logger=cw.__name__):
        weights = resolve_class_weights("inverse", [path], 2, II, None, "train")
    assert weights == pytest.approx([6 / (2 * 4), 6 / (2 * 2)])
    assert any("2 mask pixels" in r.getMessage() for r in caplog.records)


def test_null_and_lists_pass_through(masks) -> None:
    assert resolve_class_weights(None, masks, NUM_CLASSES, II, None, "train") is None
    assert resolve_class_weights([1, 2, 3, 4], [], NUM_CLASSES, II, None, "train") == [
        1.0,
        2.0,
        3.0,
        4.0,
    ]


@pytest.mark.parametrize(
    "spec,paths,words",
    [
        ([1.0, 2.0], None, ["loss.class_weights", "length 2", "num_classes=4"]),
        ("median", None, ["loss.class_weights='median'", "median_frequency", "enet"]),
        ("auto", [], ["loss.class_weights='auto'", "'train'", "none"]),
    ],
)
def test_errors_name_the_key(masks, spec, paths, words) -> None:
    with pytest.raises(ValueError) as err:
        resolve_class_weights(
            spec, masks if paths is None else paths, NUM_CLASSES, II, None, "train"
        )
    assert isinstance(err.value, UserError)
    for word in words:
        assert word in str(err.value)


def test_resolved_weights_build_the_loss(masks, tmp_path) -> None:
    weights = resolve_class_weights("auto", masks, NUM_CLASSES, II, tmp_path, "train")
    loss = composite_loss(
        II, NUM_CLASSES, weights, ce={"_target_": "src.losses.CELoss"}, dice={"_target_": "src.losses.DiceLoss"}
    )
    assert loss.class_weights.tolist() == pytest.approx(MEDIAN, rel=1e-6)
    for term in loss.terms.values():  # the shared weights reach every term that takes them
        assert term.class_weights.tolist() == pytest.approx(MEDIAN, rel=1e-6)
