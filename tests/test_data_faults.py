"""Every bad-input case gives its message (file and problem), or with data.skip_bad a warning and a count."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from torch.utils.data import DataLoader

from src.data.augment import RandomResizeCrop
from src.data.folder import FolderDataModule
from src.data.masks import SampleError
from src.utils.errors import UserError
from tests.helpers.toy_data import write_folder

STEMS = ["a", "b", "c", "d", "e", "f"]
SPLITS = {"train": STEMS[:4], "val": STEMS[4:]}


def garbage_image(root: Path) -> None:
    (root / "images" / "b.png").write_bytes(b"this is not a PNG")


def garbage_mask(root: Path) -> None:
    (root / "masks" / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")


def smaller_mask(root: Path) -> None:
    Image.fromarray(np.zeros((30, 48), np.uint8)).save(root / "masks" / "b.png")


def out_of_range_value(root: Path) -> None:
    mask = np.zeros((40, 48), np.uint8)
    mask[0, :5] = 7
    Image.fromarray(mask).save(root / "masks" / "b.png")


READ_FAULTS: dict[str, tuple[Callable[[Path], None], str]] = {
    "undecodable image": (garbage_image, r"cannot decode image .*images/b\.png"),
    "undecodable mask": (garbage_mask, r"cannot decode mask .*masks/b\.png"),
    "size mismatch": (
        smaller_mask,
        r"image .*b\.png is 48x40 \(WxH\) but its mask .*b\.png is 48x30",
    ),
    "value out of range": (
        out_of_range_value,
        r"mask .*b\.png holds labels outside \[0, 2\) other than ignore_index=255: 7 \(5 px\)",
    ),
}


def make(root: Path, **kwargs) -> FolderDataModule:
    write_folder(root, STEMS, splits=SPLITS)
    kwargs = {
        "num_classes": 2,
        "pad_multiple": 32,
        "batch_size": 2,
        "num_workers": 0,
        "augment": RandomResizeCrop(32, 32),
        **kwargs,
    }
    return FolderDataModule(root=str(root), **kwargs)


def run_epoch(dm: FolderDataModule, loader: DataLoader) -> list[dict]:
    return [dm.on_after_batch_transfer(batch, 0) for batch in loader]


@pytest.mark.parametrize("fault", READ_FAULTS)
def test_a_bad_sample_stops_training_with_its_file_and_problem(tmp_path: Path, fault: str) -> None:
    plant, message = READ_FAULTS[fault]
    dm = make(tmp_path)
    plant(tmp_path)
    dm.check_layout()  # the cheap start-up check does not open files
    dm.setup()
    with pytest.raises(UserError, match=message):
        run_epoch(dm, dm.train_dataloader())


def test_an_error_raised_in_a_worker_keeps_its_one_line_message(tmp_path: Path) -> None:
    dm = make(tmp_path, num_workers=1)
    out_of_range_value(tmp_path)
    dm.setup()
    with pytest.raises(SampleError) as info:
        run_epoch(dm, dm.train_dataloader())
    assert "\n" not in str(info.value) and "Traceback" not in str(info.value)
    assert str(info.value).startswith("mask ") and "7 (5 px)" in str(info.value)


@pytest.mark.parametrize("fault", READ_FAULTS)
def test_skip_bad_warns_once_and_counts_the_skipped_sample(
    tmp_path: Path, fault: str, caplog
) -> None:
    plant, message = READ_FAULTS[fault]
    dm = make(tmp_path, skip_bad=True)
    plant(tmp_path)
    dm.setup()
    with caplog.at_level(logging.WARNING):
        for _ in range(2):  # two epochs: the file is reported once, counted each time it is skipped
            batches = run_epoch(dm, dm.train_dataloader())
            assert [len(b["name"]) for b in batches] == [2, 2]
            assert "b" not in [n for b in batches for n in b["name"]]
    reports = [
        r.getMessage() for r in caplog.records if "data.skip_bad: skipping" in r.getMessage()
    ]
    assert len(reports) == 1 and re.search(message, reports[0])
    assert dm.skipped_samples == 2
    assert any("2 so far" in r.getMessage() for r in caplog.records)


def test_a_mask_missing_for_a_listed_image_is_named_at_start_up(tmp_path: Path, caplog) -> None:
    dm = make(tmp_path)
    (tmp_path / "masks" / "c.png").unlink()
    with pytest.raises(UserError, match=r"split 'train'.*no mask for image .*images/c\.png"):
        dm.check_layout()
    skipping = make(tmp_path, skip_bad=True)
    (tmp_path / "masks" / "c.png").unlink()
    with caplog.at_level(logging.WARNING):
        skipping.check_layout()
    assert [p[0].stem for p in skipping.split_pairs("train")] == ["a", "b", "d"]
    assert any(
        "1 pairs of split 'train' skipped" in r.getMessage() and "c.png" in r.getMessage()
        for r in caplog.records
    )


def test_a_listed_image_that_does_not_exist_is_named(tmp_path: Path) -> None:
    dm = make(tmp_path)
    (tmp_path / "train.txt").write_text("a\nb\nzzz\n")
    with pytest.raises(UserError, match=r"no image named 'zzz'"):
        dm.check_layout()


@pytest.mark.parametrize("skip_bad", [False, True])
def test_an_empty_split_is_an_error_even_with_skip_bad(tmp_path: Path, skip_bad: bool) -> None:
    dm = make(tmp_path, skip_bad=skip_bad)
    (tmp_path / "val.txt").write_text("\n")
    with pytest.raises(UserError, match=r"val\.txt lists no images \(empty split\)"):
        dm.check_layout()


def test_skip_bad_with_nothing_usable_is_an_error(tmp_path: Path) -> None:
    dm = make(tmp_path, skip_bad=True)
    for stem in STEMS:
        (tmp_path / "images" / f"{stem}.png").write_bytes(b"junk")
    dm.setup()
    with pytest.raises(UserError, match=r"none of the 4 samples of this split is usable"):
        run_epoch(dm, dm.train_dataloader())
