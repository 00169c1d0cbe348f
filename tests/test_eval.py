"""src/eval.py on a smoke-run checkpoint: metrics.json, confusion-matrix PNG, table, modes, errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from src.data.io import read_image
from src.eval import evaluate
from src.train import train
from src.utils.checkpoint import model_from_checkpoint
from src.utils.errors import UserError
from src.visualization import confusion_matrix_image
from tests.conftest import SMOKE_DATA, compose_config
from tests.helpers.checkpoints import write_checkpoint
from tests.helpers.inference_reference import Mode, confusion, reference_mask

CLASSES = ["background", "disc", "square", "triangle", "ring", "cross"]


@pytest.fixture(scope="module")
def checkpoint(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """last.ckpt of one smoke training run, shared by the tests of this module."""
    root = tmp_path_factory.mktemp("eval_smoke")
    cfg = compose_config(
        "train",
        # class-weighted, so that its predictions hold more than background
        ["debug=smoke", *SMOKE_DATA, f"paths.data_dir={data_dir}", f"paths.log_dir={root}/logs",
         "loss.class_weights=median_frequency", "optim.lr=5e-3"],
        root / "run",
    )
    train(cfg)
    return root / "run" / "checkpoints" / "last.ckpt"


@pytest.fixture
def eval_cfg(data_dir: Path, tmp_path: Path, checkpoint: Path):
    """Factory: the eval config on the smoke data, writing into tmp_path/<name>."""

    def make(*overrides: str, name: str = "eval"):
        return compose_config(
            "eval",
            [
                "debug=smoke", *SMOKE_DATA,
                f"paths.data_dir={data_dir}",
                f"paths.log_dir={tmp_path}/logs",
                f"ckpt_path={checkpoint}",
                *overrides,
            ],
            tmp_path / name,
        )

    return make


VOC = Path("VOCdevkit") / "VOC2012"


def val_ids(data_dir: Path) -> list[str]:
    """The smoke set's validation ids."""
    return (data_dir / "synthetic_smoke" / VOC / "ImageSets" / "Segmentation" / "val.txt").read_text().split()


def val_masks(data_dir: Path) -> list[np.ndarray]:
    """The smoke set's validation masks, read straight from the PNG files."""
    voc = data_dir / "synthetic_smoke" / VOC
    return [np.array(Image.open(voc / "SegmentationClass" / f"{i}.png")) for i in val_ids(data_dir)]


def reference_scores(hist: np.ndarray) -> dict[str, float]:
    """Long et al.'s metrics from a confusion matrix with numpy (empty unions left out of the means)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.diag(hist) / (hist.sum(1) + hist.sum(0) - np.diag(hist))
        acc = np.diag(hist) / hist.sum(1)
    return {
        "test/aAcc": np.diag(hist).sum() / hist.sum(),
        "test/mAcc": np.nanmean(acc),
        "test/mIoU": np.nanmean(iou),
        "test/FWIoU": np.nansum(hist.sum(1) / hist.sum() * iou),
        **{f"test/IoU/{name}": iou[c] for c, name in enumerate(CLASSES)},
    }


def test_eval_writes_metrics_confusion_png_and_table(eval_cfg, data_dir: Path, capsys) -> None:
    cfg = eval_cfg()
    payload = evaluate(cfg)
    out = Path(cfg.paths.output_dir)

    saved = json.loads((out / "metrics.json").read_text())
    assert saved["test/mIoU"] == payload["test/mIoU"]
    hist = np.array(saved["confusion_matrix"])
    # every labelled pixel of every validation image counted once, at original resolution
    gt_counts = np.bincount(np.concatenate([m[m != 255] for m in val_masks(data_dir)]), minlength=6)
    assert hist.sum(1).tolist() == gt_counts.tolist()
    for key, value in reference_scores(hist).items():
        if np.isnan(value):
            assert saved[key] is None, key
        else:
            assert saved[key] == pytest.approx(value, rel=1e-9), key
    assert saved["split"] == "val" and saved["inference"]["mode"] == "whole"

    png = np.array(Image.open(out / "confusion_matrix.png").convert("RGB"))
    assert np.array_equal(png, confusion_matrix_image(hist, CLASSES))

    printed = capsys.readouterr().out
    for name in CLASSES:
        assert name in printed
    assert f"{100 * saved['test/mIoU']:.2f}" in printed

    acc = EventAccumulator(str(out / "tensorboard"), size_guidance={"scalars": 0})
    acc.Reload()
    assert {"test/mIoU", "test/aAcc", "test/IoU/disc"} <= set(acc.Tags()["scalars"])
    assert acc.Scalars("test/mIoU")[-1].value == pytest.approx(saved["test/mIoU"], rel=1e-6)


MODES = {
    "whole": ([], Mode()),
    "slide": (["eval.mode=slide", "eval.crop_size=64", "eval.stride=32"], Mode(slide=(64, 32))),
    "tta": (["eval.tta=true", "eval.scales=[0.75,1.0,1.25]"], Mode(scales=(0.75, 1.0, 1.25), flip=True)),
    "pad_multiple": (["data.pad_multiple=64"], Mode(pad_multiple=64)),
}


@pytest.fixture(scope="module")
def random_checkpoint(checkpoint: Path) -> Path:
    """A checkpoint of the smoke run's config whose model predicts every class (random weights)."""
    trained = torch.load(checkpoint, weights_only=True)["hyper_parameters"]["config"]
    return write_checkpoint(checkpoint.parent / "random.ckpt", trained["model"], trained["data"])


@pytest.mark.parametrize("name", list(MODES))
def test_eval_modes_match_an_independent_reference(name: str, eval_cfg, random_checkpoint, data_dir) -> None:
    """Each mode (and data.pad_multiple) reaches eval's prediction: its confusion matrix is the
    reference's for that mode, and (but for `whole`) not what the whole-image pass gives."""
    overrides, mode = MODES[name]
    checkpoint = random_checkpoint
    payload = evaluate(eval_cfg(f"ckpt_path={checkpoint}", *overrides, name=name))
    got = np.array(payload["confusion_matrix"])
    ids, masks = val_ids(data_dir), val_masks(data_dir)
    images = [read_image(data_dir / "synthetic_smoke" / VOC / "JPEGImages" / f"{i}.jpg") for i in ids]
    model = model_from_checkpoint(checkpoint)[0]
    expected = confusion(masks, [reference_mask(model, image, mode) for image in images], 6)
    tolerance = 1e-3 * expected.sum()  # near-ties may flip under another summation order
    assert np.abs(got - expected).sum() <= tolerance
    if name != "whole":
        whole = confusion(masks, [reference_mask(model, image, Mode()) for image in images], 6)
        assert np.abs(got - whole).sum() > tolerance, f"{name} predicted what the whole pass does"
    if name == "tta":
        assert payload["inference"] == {"mode": "whole", "tta": True, "scales": [0.75, 1.0, 1.25], "flip": True}


def test_num_classes_mismatch_is_a_clear_error(eval_cfg) -> None:
    cfg = eval_cfg("data.num_classes=5", "data.class_names=[a,b,c,d,e]")
    with pytest.raises(UserError, match=r"predicts 6 classes but data\.num_classes=5"):
        evaluate(cfg)


def test_user_errors_name_the_key(eval_cfg, tmp_path: Path) -> None:
    with pytest.raises(UserError, match="ckpt_path is required"):
        evaluate(eval_cfg("ckpt_path=null"))
    with pytest.raises(UserError, match=r"ckpt_path=.*missing\.ckpt does not exist"):
        evaluate(eval_cfg(f"ckpt_path={tmp_path}/missing.ckpt"))
    with pytest.raises(UserError, match=r"eval\.mode='tiles'"):
        evaluate(eval_cfg("eval.mode=tiles"))
    with pytest.raises(UserError, match=r"split file .*nosuch\.txt"):
        evaluate(eval_cfg("data.val_split=nosuch"))
