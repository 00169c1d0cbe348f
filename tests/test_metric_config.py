"""The metrics config group: building the set from config, what validation computes, the images it logs."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from omegaconf import OmegaConf

from src.callbacks.image_logger import CONFUSION_TAG, RELIABILITY_TAG, SegmentationImageLogger
from src.metrics import (
    BoundaryIoU,
    CalibrationError,
    MetricSet,
    PerImageScores,
    SegmentationMetrics,
)
from src.utils.build import build_run
from src.utils.errors import UserError
from src.utils.metric_config import build_metrics, check_metric_names, metric_choices


def test_every_config_file_builds_with_the_data_arguments(smoke_cfg) -> None:
    cfg = smoke_cfg(f"metrics=[{','.join(metric_choices())}]", "metrics.calibration.bins=7")
    metrics = build_metrics(cfg.metrics, 6, 255)
    assert list(metrics.metrics) == [
        "boundary_f1",
        "boundary_iou",
        "calibration",
        "miou",
        "per_image",
    ]
    assert all(m.num_classes == 6 and m.ignore_index == 255 for m in metrics.metrics.values())
    assert metrics.metrics["calibration"].bins == 7
    assert metrics.metrics["boundary_iou"].dilation_ratio == 0.02  # conf/metrics' default


def test_default_is_the_miou_family_and_null_leaves_a_metric_out(smoke_cfg) -> None:
    assert list(OmegaConf.to_container(smoke_cfg().metrics)) == ["miou"]
    cfg = smoke_cfg("metrics=[miou,calibration]", "metrics.calibration=null")
    assert list(build_metrics(cfg.metrics, 6, 255).metrics) == ["miou"]


def test_a_metric_the_caller_always_needs_stays_when_set_to_null(smoke_cfg) -> None:
    # eval.py reads the per-image table whatever `metrics.per_image` says
    cfg = smoke_cfg("metrics=[miou,per_image]", "metrics.per_image=null")
    always = {"per_image": {"_target_": "src.metrics.PerImageScores"}}
    metrics = build_metrics(cfg.metrics, 6, 255, always)
    assert list(metrics.metrics) == ["miou", "per_image"]
    assert isinstance(metrics.metrics["per_image"], PerImageScores)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["metrics=[miou,calibraton]"], r"no metric named calibraton; choices"),
        (["-m", "metrics=[miou],[miou,biou]"], r"no metric named biou"),
        (["metrics=boundary"], r"metrics=boundary: no metric named boundary"),
    ],
)
def test_names_are_checked_on_the_command_line(arguments, message) -> None:
    with pytest.raises(UserError, match=message):
        check_metric_names(arguments)


def test_known_names_and_other_overrides_pass() -> None:
    check_metric_names(
        ["metrics=[miou,boundary_iou]", "metrics.boundary_iou.dilation_px=3", "seed=1"]
    )
    check_metric_names(["+metrics.mine={_target_: x.Y}"])  # a user's own metric is not a file


def validation_inputs(smoke_cfg, *overrides: str) -> list[dict]:
    """What the module passes to its metric set during one validation batch."""
    cfg = smoke_cfg(*overrides)
    run = build_run(cfg, trainer=False)
    seen = []
    original = run.module.val_metrics.update_padded

    def spy(pred, target, sizes=None, probs=None, names=None):
        seen.append({"probs": probs, "sizes": sizes, "names": names})
        original(pred, target, sizes, probs, names)

    run.module.val_metrics.update_padded = spy
    trainer = L.Trainer(
        accelerator="cpu", limit_val_batches=1, logger=False, enable_progress_bar=False,
        enable_model_summary=False, enable_checkpointing=False,
    )  # fmt: skip
    trainer.validate(run.module, datamodule=run.datamodule, verbose=False)
    return seen


def test_validation_computes_probabilities_only_for_a_metric_that_reads_them(smoke_cfg) -> None:
    plain = validation_inputs(smoke_cfg)
    assert len(plain) == 1 and plain[0]["probs"] is None
    calibrated = validation_inputs(smoke_cfg, "metrics=[miou,calibration]")
    probs = calibrated[0]["probs"]
    assert probs is not None and torch.allclose(probs.sum(1), torch.ones(()))
    assert len(calibrated[0]["names"]) == len(calibrated[0]["sizes"]) == probs.shape[0]


def test_image_logger_draws_the_reliability_diagram_when_calibration_ran() -> None:
    class Module(L.LightningModule):
        class_names = ["a", "b"]

    module = Module()
    module.val_metrics = MetricSet({"miou": SegmentationMetrics(2), "biou": BoundaryIoU(2)})
    labels = torch.tensor([[[0, 1], [1, 1]]])
    module.val_metrics.update(labels, labels)
    module.val_metrics.compute()
    assert set(SegmentationImageLogger.metric_images(module)) == {CONFUSION_TAG}
    module.val_metrics = MetricSet(
        {"miou": SegmentationMetrics(2), "calibration": CalibrationError(2)}
    )
    module.val_metrics.update(
        labels, labels, torch.nn.functional.one_hot(labels, 2).permute(0, 3, 1, 2).float()
    )
    module.val_metrics.compute()
    images = SegmentationImageLogger.metric_images(module)
    assert set(images) == {CONFUSION_TAG, RELIABILITY_TAG}
    assert images[RELIABILITY_TAG].ndim == 3 and images[RELIABILITY_TAG].dtype.name == "uint8"
