"""data=cityscapes on a small tree laid out as the download: the label table, mapped masks, layout, a smoke run."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import hydra
import numpy as np
import pytest
import torch
from PIL import Image

from src.data.augment import RandomResizeCrop
from src.data.cityscapes_labels import LABELS
from src.data.masks import SampleError
from src.predict import inference_options, predict
from src.train import train
from src.utils.build import model_size
from src.utils.errors import UserError
from tests.conftest import compose_config
from tests.helpers.benchmark_trees import cityscapes_frames, load_check_dataset, write_cityscapes
from tests.helpers.checkpoints import write_checkpoint
from tests.helpers.cli import run_script

# The official table's trained ids, written out independently of src/ (Cordts et al. 2016, the
# benchmark's 19 classes): label id -> train id. Every other id 0..33 is ignored.
TRAIN_IDS = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11,
             25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}  # fmt: skip
CLASS_NAMES = ["road", "sidewalk", "building", "wall", "fence", "pole", "traffic light",
               "traffic sign", "vegetation", "terrain", "sky", "person", "rider", "car", "truck",
               "bus", "train", "motorcycle", "bicycle"]  # fmt: skip


def expected_train_ids(label_ids: np.ndarray) -> np.ndarray:
    """The test's own mapping: TRAIN_IDS, 255 for every other id."""
    table = np.full(256, 255, dtype=np.uint8)
    for label_id, train_id in TRAIN_IDS.items():
        table[label_id] = train_id
    return table[label_ids]


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A parent folder holding cityscapes/{leftImg8bit,gtFine}/{train,val}/<city>/..."""
    parent = tmp_path_factory.mktemp("cs_parent")
    write_cityscapes(parent / "cityscapes")
    return parent


def datamodule(root: Path, *overrides: str):
    cfg = compose_config(
        "train", ["data=cityscapes", f"data.root={root}", *overrides], root / "run"
    )
    return hydra.utils.instantiate(cfg.data, augment=None)


def test_table_matches_the_official_labels_module() -> None:
    official = pytest.importorskip("cityscapesscripts.helpers.labels")
    ours = [(lb.name, lb.id, lb.train_id, lb.category, lb.color) for lb in LABELS]
    theirs = [(lb.name, lb.id, lb.trainId, lb.category, lb.color) for lb in official.labels]
    assert ours == theirs
    # what the official table says about evaluation agrees with our train ids
    assert all(lb.ignoreInEval == (lb.trainId in (255, -1)) for lb in official.labels)


def test_table_facts() -> None:
    ids = {lb.id: lb.train_id for lb in LABELS}
    assert sorted(i for i in ids if i >= 0) == list(range(34))
    assert {i: t for i, t in ids.items() if t not in (255, -1)} == TRAIN_IDS
    assert sum(t == 255 for t in ids.values()) == 15
    plate = next(lb for lb in LABELS if lb.name == "license plate")
    assert (plate.id, plate.train_id) == (-1, -1)
    car = next(lb for lb in LABELS if lb.name == "car")
    colours = [lb.color for lb in LABELS]
    assert colours.count((0, 0, 0)) == 5 and colours.count(car.color) == 2  # colours do not decode


def test_config_names_colours_and_test_time_defaults(tree: Path, tmp_path: Path) -> None:
    official = pytest.importorskip("cityscapesscripts.helpers.labels")
    cfg = compose_config("train", ["data=cityscapes", f"data.root={tree}"], tmp_path)
    assert list(cfg.data.class_names) == CLASS_NAMES
    by_train_id = {lb.trainId: lb for lb in official.labels if 0 <= lb.trainId < 255}
    assert [tuple(c) for c in cfg.data.palette] == [by_train_id[t].color for t in range(19)]
    assert cfg.data.num_classes == 19 and list(cfg.data.augment.crop_size) == [512, 1024]
    assert cfg.model_size_at == [512, 1024]
    evaluation = compose_config("eval", ["data=cityscapes"], tmp_path).eval
    assert (evaluation.mode, list(evaluation.crop_size), list(evaluation.stride)) == (
        "slide", [1024, 1024], [768, 768])  # fmt: skip
    assert (
        compose_config("eval", ["data=cityscapes", "eval.mode=whole"], tmp_path).eval.mode
        == "whole"
    )


def test_masks_are_mapped_pixel_by_pixel(tree: Path) -> None:
    dm = datamodule(tree)
    for split in ("train", "val"):
        pairs = dm.split_pairs(split)
        assert [image.name for image, _ in pairs] == sorted(
            f"{frame}_leftImg8bit.png" for _, frame in cityscapes_frames(split)
        )
        dataset = dm.dataset(split)
        seen = set()
        for index, (_, mask_path) in enumerate(pairs):
            raw = np.array(Image.open(mask_path))
            seen |= set(np.unique(raw).tolist())
            assert mask_path.name.endswith("_gtFine_labelIds.png")
            np.testing.assert_array_equal(dataset[index]["mask"].numpy(), expected_train_ids(raw))
        assert {0, 7, 33} <= seen and seen & {9, 10, 29, 30}  # ignored and mapped ids both occur


def test_out_of_table_ids_and_colour_masks_are_refused(tree: Path, tmp_path: Path) -> None:
    dm = datamodule(tree)
    raw = np.array(Image.open(dm.split_pairs("val")[0][1]))
    raw[:2, :3] = 34
    raw[5, 5] = 200
    bad = tmp_path / "bad_gtFine_labelIds.png"
    Image.fromarray(raw).save(bad)
    with pytest.raises(
        SampleError, match=rf"{bad}.*cityscapes does not define: 34 \(6 px\), 200 \(1 px\)"
    ):
        dm.decoder(bad)
    wide = tmp_path / "wide_gtFine_labelIds.png"
    Image.fromarray(np.array([[7, 300], [26, 33]], dtype=np.uint16)).save(wide)  # a 16-bit PNG
    with pytest.raises(SampleError, match=r"does not define: 300 \(1 px\)"):
        dm.decoder(wide)
    colour = dm.split_pairs("val")[0][1].with_name(
        dm.split_pairs("val")[0][1].name.replace("labelIds", "color")
    )
    with pytest.raises(SampleError, match="has mode RGB.*colour PNGs do not decode to ids"):
        dm.decoder(colour)


def test_layout_errors_name_the_path(tree: Path, tmp_path: Path) -> None:
    with pytest.raises(UserError, match="does not exist; expected a Cityscapes folder"):
        datamodule(tmp_path / "nowhere").split_pairs("train")
    with pytest.raises(UserError, match="does not hold the Cityscapes dataset"):
        datamodule(tmp_path).split_pairs("train")
    with pytest.raises(UserError, match=r"split 'test'.*has the splits train, val"):
        datamodule(tree).split_pairs("test")
    # an image without its mask is named (the split fails, or is skipped with data.skip_bad)
    copy = tmp_path / "copy"
    write_cityscapes(copy)
    city, frame = cityscapes_frames("val")[0]
    (copy / "gtFine" / "val" / city / f"{frame}_gtFine_labelIds.png").unlink()
    with pytest.raises(UserError, match=f"no mask .*{frame}_gtFine_labelIds.png"):
        datamodule(copy).split_pairs("val")
    assert len(datamodule(copy, "data.skip_bad=true").split_pairs("val")) == 3


@pytest.fixture(scope="module")
def smoke_run(tree: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The output dir of one `debug=smoke data=cityscapes` run on the tree."""
    root = tmp_path_factory.mktemp("cs_smoke")
    overrides = ["debug=smoke", "data=cityscapes", f"data.root={tree}", "data.batch_size=2",
                 f"paths.log_dir={root}/logs", "callbacks.segmentation_images=null"]  # fmt: skip
    train(compose_config("train", overrides, root / "run"))
    return root / "run"


@pytest.fixture(scope="module")
def varied_checkpoint(smoke_run: Path) -> Path:
    """The smoke run's model and data config with random weights: every class gets predicted.

    A few smoke steps predict one or two classes everywhere, too little for an IoU comparison.
    """
    stored = torch.load(smoke_run / "checkpoints" / "last.ckpt", weights_only=True)
    config = stored["hyper_parameters"]["config"]
    return write_checkpoint(smoke_run / "varied.ckpt", config["model"], config["data"])


def test_smoke_run_trains_and_names_the_classes(smoke_run: Path) -> None:
    summary = json.loads((smoke_run / "metrics.json").read_text())
    assert np.isfinite(summary["best"]["val/mIoU"])
    names = {f"val/IoU/{name}" for name in ("road", "traffic light", "bicycle")}
    assert names <= set(summary["final"])
    # the checkpoint stores the mapping by name and the names resolved: predict.py needs nothing else
    stored = torch.load(smoke_run / "checkpoints" / "last.ckpt", weights_only=True)
    data = stored["hyper_parameters"]["config"]["data"]
    assert data["label_map"] == "cityscapes" and data["class_names"] == CLASS_NAMES


def predict_into(output: Path, checkpoint: Path, images: Path, *overrides: str) -> list[Path]:
    """predict.py's masks for every image below `images`, written into `output`."""
    cfg = compose_config(
        "predict",
        [f"ckpt_path={checkpoint}", f"input={images}", f"output={output}",
         f"paths.log_dir={output.parent}/logs", *overrides],
        output.parent / "predict_run",
    )  # fmt: skip
    return predict(cfg)


def test_predict_writes_label_ids_that_map_back_to_its_train_ids(
    varied_checkpoint: Path, tree: Path, tmp_path: Path
) -> None:
    checkpoint, images = varied_checkpoint, tree / "cityscapes" / "leftImg8bit" / "val"
    written = predict_into(tmp_path / "ids", checkpoint, images, "predict.format=label_ids")
    frames = cityscapes_frames("val")
    expected = sorted(tmp_path / "ids" / city / f"{frame}_leftImg8bit.png" for city, frame in frames)
    assert sorted(written) == expected  # mirrored city folders, the frame's stem kept
    assert sorted(p for p in (tmp_path / "ids").rglob("*") if p.is_file()) == expected  # nothing else
    palette_masks = predict_into(tmp_path / "classes", checkpoint, images, "predict.format=palette")
    for ids_path, classes_path in zip(expected, sorted(palette_masks), strict=True):
        with Image.open(ids_path) as ids_png, Image.open(classes_path) as classes_png:
            assert ids_png.mode == "L" and classes_png.mode == "P"
            label_ids, train_ids = np.array(ids_png), np.array(classes_png)
        assert set(np.unique(label_ids).tolist()) <= set(TRAIN_IDS)
        np.testing.assert_array_equal(expected_train_ids(label_ids), train_ids)
    # overlays sit beside the masks, never among them
    overlays = sorted((tmp_path / "classes_overlays").rglob("*.png"))
    assert [p.relative_to(tmp_path / "classes_overlays") for p in overlays] == [
        p.relative_to(tmp_path / "classes") for p in sorted(palette_masks)
    ]


def test_eval_miou_equals_the_official_evaluation_of_predicted_label_ids(
    varied_checkpoint: Path, tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    official = pytest.importorskip("cityscapesscripts.evaluation.evalPixelLevelSemanticLabeling")
    checkpoint, dataset = varied_checkpoint, tree / "cityscapes"
    predict_into(tmp_path / "results", checkpoint, dataset / "leftImg8bit" / "val", "predict.format=label_ids")

    # the script as a user runs it: ground truth found under CITYSCAPES_DATASET, predictions
    # searched recursively under CITYSCAPES_RESULTS (iIoU needs instanceIds files: off)
    monkeypatch.setenv("CITYSCAPES_DATASET", str(dataset))
    monkeypatch.setenv("CITYSCAPES_RESULTS", str(tmp_path / "results"))
    args = official.args
    for name, value in {"predictionPath": None, "predictionWalk": None, "evalInstLevelScore": False,
                        "JSONOutput": False, "quiet": True}.items():  # fmt: skip
        monkeypatch.setattr(args, name, value)
    ground_truth = sorted(str(p) for p in (dataset / "gtFine" / "val").glob("*/*_gtFine_labelIds.png"))
    predictions = [official.getPrediction(args, gt) for gt in ground_truth]
    result = official.evaluateImgLists(predictions, ground_truth, args)

    run = run_script(
        [sys.executable, "src/eval.py", f"ckpt_path={checkpoint}", "data=cityscapes",
         f"data.root={tree}", "data.num_workers=0", "trainer.accelerator=cpu",
         f"paths.log_dir={tmp_path}/logs", f"hydra.run.dir={tmp_path}/eval"]  # fmt: skip
    )
    assert run.returncode == 0, run.stderr[-3000:]
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    print(f"eval.py test/mIoU {metrics['test/mIoU']:.6f}, official {result['averageScoreClasses']:.6f}")
    assert metrics["test/mIoU"] == pytest.approx(result["averageScoreClasses"], abs=1e-9)
    for name in CLASS_NAMES:  # every class's IoU too (NaN / null where a class never occurs)
        theirs = result["classScores"][name]
        ours = metrics[f"test/IoU/{name}"]
        assert (ours is None and np.isnan(theirs)) or ours == pytest.approx(theirs, abs=1e-9)
    assert sum((metrics[f"test/IoU/{name}"] or 0) > 0 for name in CLASS_NAMES) >= 3  # not only 0 == 0


def test_check_dataset_reports_a_planted_label_by_file_and_value(tmp_path: Path, capsys) -> None:
    root = write_cityscapes(tmp_path / "cs")
    city, frame = cityscapes_frames("train")[1]
    planted = root / "gtFine" / "train" / city / f"{frame}_gtFine_labelIds.png"
    raw = np.array(Image.open(planted))
    raw[10:12, 20:24] = 42
    Image.fromarray(raw).save(planted)
    code = load_check_dataset().main(
        [
            "data=cityscapes",
            f"data.root={root}",
            "--out",
            str(tmp_path / "report"),
            "--workers",
            "0",
        ]
    )
    printed = capsys.readouterr().out
    assert code == 1, printed
    assert (
        f"FAULT: mask {planted} holds label ids that data.label_map=cityscapes does not define: 42 (8 px)"
        in printed
    )
    report = json.loads((tmp_path / "report" / "check_dataset.json").read_text())
    assert report["classes"] == CLASS_NAMES
    assert len(report["splits"]["train"]["faults"]) == 1 and report["splits"]["val"]["faults"] == []
    # the clean split's histogram is the test's own mapping of the raw ids
    masks = [
        np.array(Image.open(m)) for m in sorted((root / "gtFine" / "val").glob("*/*_labelIds.png"))
    ]
    expected = sum(np.bincount(expected_train_ids(m).ravel(), minlength=256) for m in masks)
    assert report["splits"]["val"]["pixels"] == expected[:19].tolist()
    assert report["splits"]["val"]["ignored"] == int(expected[255])


def test_crop_takes_height_and_width(tree: Path) -> None:
    cfg = compose_config("train", ["data=cityscapes", "data.augment.photometric=false"], tree / "run")
    crop = hydra.utils.instantiate(cfg.data.augment, crop_size=[24, 40], base_size=64)
    image = np.zeros((64, 128, 3), np.uint8)
    mask = np.arange(64 * 128, dtype=np.int64).reshape(64, 128) % 19
    out_image, out_mask = crop(image, mask.astype(np.uint8))
    assert out_image.shape == (24, 40, 3) and out_mask.shape == (24, 40)
    with pytest.raises(UserError, match=r"crop_size=\[1, 2, 3\]: expected a side or \[height, width\]"):
        RandomResizeCrop(crop_size=[1, 2, 3], base_size=8)


def test_predict_takes_test_time_defaults_from_the_checkpoints_data(tmp_path: Path) -> None:
    stored = {"inference": {"mode": "slide", "crop_size": [1024, 1024], "stride": [768, 768]}}
    options = inference_options(compose_config("predict", [], tmp_path), stored)
    assert (options.mode, options.crop_size, options.stride) == ("slide", (1024, 1024), (768, 768))
    chosen = compose_config("predict", ["predict.mode=whole", "predict.stride=100"], tmp_path)
    options = inference_options(chosen, stored)
    assert (options.mode, options.stride) == ("whole", (100, 100))  # the command line wins
    assert inference_options(compose_config("predict", [], tmp_path), {}).mode == "whole"


def test_model_size_is_counted_at_a_height_by_width_crop() -> None:
    conv = torch.nn.Conv2d(3, 2, kernel_size=1, bias=False)  # 6 multiply-adds per pixel
    stats = model_size(conv, [16, 32])
    assert stats["gflops"] == pytest.approx(2 * 6 * 16 * 32 / 1e9)
