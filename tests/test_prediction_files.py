"""src/prediction_files.py: recursive inputs, mirrored mask paths, the output-folder guard, the mask formats."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from src.data.label_maps import get_label_map
from src.data.palette import colour_table
from src.prediction_files import (
    check_format,
    check_output,
    input_base,
    list_inputs,
    output_names,
    overlay_folder,
    write_mask,
)
from src.utils.errors import UserError


@pytest.fixture
def nested(tmp_path: Path) -> Path:
    """images/{a,b}/same.jpg (one stem in two folders), images/b/deeper/x.png, and a text file."""
    root = tmp_path / "images"
    for relative in ("a/same.jpg", "b/same.jpg", "b/deeper/x.png", "top.jpg"):
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(root / relative), np.zeros((8, 8, 3), np.uint8))
    (root / "b" / "notes.txt").write_text("not an image")
    return root


def test_a_folder_is_read_recursively_and_mirrored(nested: Path) -> None:
    files = list_inputs(str(nested))
    relative = [f.relative_to(nested).as_posix() for f in files]
    assert relative == ["a/same.jpg", "b/deeper/x.png", "b/same.jpg", "top.jpg"]
    assert input_base(str(nested), files) == nested
    names = [n.as_posix() for n in output_names(files, nested)]
    assert names == ["a/same.png", "b/deeper/x.png", "b/same.png", "top.png"]  # same stem, kept apart


def test_globs_and_files_mirror_below_their_common_folder(nested: Path) -> None:
    files = list_inputs(str(nested / "**" / "same.jpg"))
    base = input_base(str(nested / "**" / "same.jpg"), files)
    assert base == nested.resolve()
    assert [n.as_posix() for n in output_names(files, base)] == ["a/same.png", "b/same.png"]
    [single] = list_inputs(str(nested / "b" / "deeper" / "x.png"))
    base = input_base(str(single), [single])
    assert [n.as_posix() for n in output_names([single], base)] == ["x.png"]


def test_clashing_names_and_an_output_inside_the_input_are_refused(nested: Path, tmp_path: Path) -> None:
    cv2.imwrite(str(nested / "a" / "same.png"), np.zeros((8, 8, 3), np.uint8))
    files = list_inputs(str(nested))
    with pytest.raises(UserError, match=r"same\.jpg and .*same\.png would both be predicted into a/same\.png"):
        output_names(files, nested)
    files = [f for f in files if f.suffix == ".png"]
    names = output_names(files, nested)
    for inside in (nested, nested / "preds", nested / "a"):  # a folder input is read recursively
        with pytest.raises(UserError, match=f"output={inside} lies inside the input folder"):
            check_output(inside, str(nested), files, names)
    check_output(tmp_path / "preds", str(nested), files, names)  # beside the input: fine
    # one file or a glob: only a mask that would overwrite an input image is refused
    single = nested / "a" / "same.png"
    check_output(nested / "preds", str(single), [single], [Path("same.png")])
    with pytest.raises(UserError, match=r"the mask .*same\.png would overwrite the input image"):
        check_output(nested / "a", str(single), [single], [Path("same.png")])
    assert overlay_folder(tmp_path / "preds") == tmp_path / "preds_overlays"
    assert overlay_folder(Path(f"{tmp_path}/preds/")) == tmp_path / "preds_overlays"


def test_formats(tmp_path: Path) -> None:
    mask = np.array([[0, 1, 2], [149, 18, 5]], dtype=np.uint8)
    ade = get_label_map("ade20k")
    write_mask(tmp_path / "ade" / "m.png", mask, "label_ids", colour_table(None), ade)
    with Image.open(tmp_path / "ade" / "m.png") as png:
        assert png.mode == "L"
        np.testing.assert_array_equal(np.array(png), mask.astype(int) + 1)  # ADE20K's 1..150
    cityscapes = get_label_map("cityscapes")
    write_mask(tmp_path / "cs.png", mask[:, :2] % 19, "label_ids", colour_table(None), cityscapes)
    assert np.array(Image.open(tmp_path / "cs.png")).tolist() == [[7, 8], [31, 33]]
    write_mask(tmp_path / "plain.png", mask, "label_ids", colour_table(None), None)
    np.testing.assert_array_equal(np.array(Image.open(tmp_path / "plain.png")), mask)
    write_mask(tmp_path / "pal.png", mask, "palette", colour_table(None), None)
    with Image.open(tmp_path / "pal.png") as png:
        assert png.mode == "P" and np.array_equal(np.array(png), mask)
    with pytest.raises(UserError, match=r"predict\.format='trainids': expected one of palette, label_ids"):
        check_format("trainids")
