"""src/eval.py on a smoke-run checkpoint: metrics.json, confusion-matrix PNG, table, modes, errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from src.eval import evaluate
from src.train import train
from src.utils.errors import UserError
from src.visualization import confusion_matrix_image
from tests.conftest import SMOKE_DATA, compose_config

CLASSES = ["background", "disc", "square", "triangle", "ring", "cross"]


@pytest.fixture(scope="module")
def checkpoint(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """last.ckpt of one smoke training run, shared by the tests of this module."""
    root = tmp_path_factory.mktemp("eval_smoke")
    cfg = compose_config(
        "train",
        ["debug=smoke", *SMOKE_DATA, f"paths.data_dir={data_dir}", f"paths.log_dir={root}/logs"],
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


def val_masks(data_dir: Path) -> list[np.ndarray]:
    """The smoke set's validation masks, read straight from the PNG files."""
    voc = data_dir / "synthetic_smoke" / "VOCdevkit" / "VOC2012"
    ids = (voc / "ImageSets" / "Segmentation" / "val.txt").read_text().split()
    return [np.array(Image.open(voc / "SegmentationClass" / f"{i}.png")) for i in ids]


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


def test_slide_and_tta_modes_agree_with_whole_where_they_must(eval_cfg) -> None:
    whole = evaluate(eval_cfg(name="whole"))
    # windows as large as the padded images: one window, the whole-image pass
    slide = evaluate(
        eval_cfg("eval.mode=slide", "eval.crop_size=128", "eval.stride=64", name="slide")
    )
    # one scale, no flip: softmax keeps the argmax of the logits
    tta_one = evaluate(
        eval_cfg("eval.tta=true", "eval.scales=[1.0]", "eval.flip=false", name="tta1")
    )
    assert slide["confusion_matrix"] == whole["confusion_matrix"]
    assert tta_one["confusion_matrix"] == whole["confusion_matrix"]
    # mmseg's default recipe (six scales x flip) runs and counts the same pixels
    tta = evaluate(eval_cfg("eval.tta=true", name="tta"))
    assert (
        np.array(tta["confusion_matrix"]).sum(1).tolist()
        == np.array(whole["confusion_matrix"]).sum(1).tolist()
    )
    assert tta["inference"] == {
        "mode": "whole",
        "tta": True,
        "scales": [0.5, 0.75, 1.0, 1.25, 1.5, 1.75],
        "flip": True,
    }


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
