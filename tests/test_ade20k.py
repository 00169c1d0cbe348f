"""data=ade20k on a small ADEChallengeData2016 tree: names, reduce-zero-label masks, grayscale JPEGs, a smoke run."""

from __future__ import annotations

import json
from pathlib import Path

import hydra
import numpy as np
import pytest
import torch
from PIL import Image

from src.data.masks import SampleError
from src.train import train
from src.utils.errors import UserError
from tests.conftest import compose_config
from tests.helpers.benchmark_trees import ade20k_ids, load_check_dataset, write_ade20k

# A few lines of the download's objectInfo150.txt as it is (tab-separated, stray spaces in the
# index column and in names): the first name of each line is the class name.
OBJECT_INFO = """Idx	Ratio	Train	Val	Name
1	0.1576	11664	1172	wall
8	0.0231	1906	199	bed 
21	0.0098	3164	306	car, auto, automobile, machine, motorcar
45	0.0019	549	46	chest of drawers, chest, bureau, dresser
 137	0.0003	528	65	traffic light, traffic signal, stoplight
150	0.0002	421	56	flag"""  # noqa: W291 (the stray space after "bed" is the file's)


def first_names(text: str) -> dict[int, str]:
    """{annotation value: first name} of objectInfo150.txt lines."""
    rows = [line.split("\t") for line in text.splitlines()[1:]]
    return {int(row[0]): row[-1].split(",")[0].strip() for row in rows}


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The parent of ADEChallengeData2016/ (data.root may name either)."""
    parent = tmp_path_factory.mktemp("ade_parent")
    write_ade20k(parent)
    return parent


def datamodule(root: Path, *overrides: str):
    cfg = compose_config("train", ["data=ade20k", f"data.root={root}", *overrides], root / "run")
    return hydra.utils.instantiate(cfg.data, augment=None)


def test_class_names_and_colours(tmp_path: Path) -> None:
    cfg = compose_config("train", ["data=ade20k"], tmp_path)
    names = list(cfg.data.class_names)
    assert len(names) == cfg.data.num_classes == 150 and len(set(names)) == 150
    for value, name in first_names(OBJECT_INFO).items():
        assert names[value - 1] == name
    assert all(name == name.strip() and "  " not in name for name in names)
    palette = np.array(cfg.data.palette)
    assert palette.shape == (150, 3) and palette.min() >= 0 and palette.max() <= 255
    assert tuple(palette[0]) == (120, 120, 120)  # wall
    assert compose_config("eval", ["data=ade20k"], tmp_path).eval.mode == "whole"


def test_zero_is_ignored_and_the_rest_shifted_pixel_by_pixel(tree: Path) -> None:
    for root in (tree, tree / "ADEChallengeData2016"):
        dm = datamodule(root)
        assert (dm.train_split, dm.val_split) == ("training", "validation")
        pairs = dm.split_pairs("validation")
        assert [image.stem for image, _ in pairs] == ade20k_ids("validation")
    dataset, seen = dm.dataset("training"), set()
    for index, (_, mask_path) in enumerate(dm.split_pairs("training")):
        raw = np.array(Image.open(mask_path)).astype(np.int64)
        seen |= set(np.unique(raw).tolist())
        expected = np.where(raw == 0, 255, raw - 1)
        np.testing.assert_array_equal(dataset[index]["mask"].numpy(), expected)
    assert {0, 1, 150} <= seen  # "other" and both ends of the classes occur


def test_grayscale_jpeg_loads_with_three_channels(tree: Path) -> None:
    dm = datamodule(tree)
    image_path = dm.split_pairs("training")[1][0]
    with Image.open(image_path) as img:
        assert img.mode == "L"  # the file really is a 1-channel JPEG
        gray = np.array(img)
    sample = dm.dataset("training")[1]
    assert sample["image"].shape == (3, *gray.shape)
    channels = sample["image"].numpy()
    assert (channels[0] == channels[1]).all() and (channels[1] == channels[2]).all()
    assert np.abs(channels[0].astype(int) - gray).max() <= 1


def test_out_of_table_values_and_layout_errors(tree: Path, tmp_path: Path) -> None:
    dm = datamodule(tree)
    bad = tmp_path / "bad.png"
    Image.fromarray(np.array([[0, 151, 151], [150, 255, 1]], dtype=np.uint8)).save(bad)
    with pytest.raises(
        SampleError, match=rf"{bad}.*ade20k does not define: 151 \(2 px\), 255 \(1 px\)"
    ):
        dm.decoder(bad)
    with pytest.raises(
        UserError, match="does not hold ADE20K; expected ADEChallengeData2016/images"
    ):
        datamodule(tmp_path).split_pairs("training")
    with pytest.raises(UserError, match=r"split 'val'.*has the splits training, validation"):
        datamodule(tree).split_pairs("val")


def test_smoke_run(tree: Path, tmp_path: Path) -> None:
    cfg = compose_config(
        "train",
        ["debug=smoke", "data=ade20k", f"data.root={tree}", "data.batch_size=2",
         f"paths.log_dir={tmp_path}/logs", "callbacks.segmentation_images=null"],
        tmp_path / "run",
    )  # fmt: skip
    metrics = train(cfg)
    summary = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert np.isfinite(metrics["val/mIoU_best"])
    assert {"val/IoU/wall", "val/IoU/chest of drawers", "val/IoU/flag"} <= set(summary["final"])
    stored = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    assert stored["hyper_parameters"]["config"]["data"]["label_map"] == "ade20k"


def test_check_dataset_reports_a_planted_label_by_file_and_value(tmp_path: Path, capsys) -> None:
    base = write_ade20k(tmp_path)
    planted = base / "annotations" / "validation" / f"{ade20k_ids('validation')[0]}.png"
    raw = np.array(Image.open(planted))
    raw[0, :5] = 151
    Image.fromarray(raw).save(planted)
    code = load_check_dataset().main(
        ["data=ade20k", f"data.root={base}", "--out", str(tmp_path / "report"), "--workers", "0"]
    )
    printed = capsys.readouterr().out
    assert code == 1, printed
    assert (
        f"FAULT: mask {planted} holds label ids that data.label_map=ade20k does not define: 151 (5 px)"
        in printed
    )
    report = json.loads((tmp_path / "report" / "check_dataset.json").read_text())
    assert (
        report["splits"]["training"]["faults"] == []
        and len(report["splits"]["validation"]["faults"]) == 1
    )
    masks = [
        np.array(Image.open(m)) for m in sorted((base / "annotations" / "training").glob("*.png"))
    ]
    counts = sum(np.bincount(m.ravel(), minlength=256) for m in masks)
    assert report["splits"]["training"]["pixels"] == counts[1:151].tolist()
    assert report["splits"]["training"]["ignored"] == int(counts[0])
