"""Evaluate a checkpoint on a dataset split through the training module's test hooks.

python src/eval.py ckpt_path=<run>/checkpoints/last.ckpt [data=...] [data.val_split=val]
                   [metrics=[miou,boundary_iou,boundary_f1,calibration]] [report=true] [worst_k=8]
                   [eval.mode=whole|slide eval.crop_size=512 eval.stride=341] [eval.tta=true]

The metric set is training's (`metrics=`, conf/metrics/), plus the per-image scores; the module's
test_step predicts in the `eval.*` inference mode and logs `test/*`. Files written into the run's
output dir are listed in src/evaluation/outputs.py (metrics.json, per_image.csv, the worst images,
the reliability diagram, report.html).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

# `python src/eval.py` puts src/ on sys.path, not the repository root that holds the package.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import hydra  # noqa: E402
import lightning as L  # noqa: E402
from omegaconf import DictConfig, OmegaConf  # noqa: E402

from src.data.palette import colour_table  # noqa: E402
from src.evaluation.failures import render_failures  # noqa: E402
from src.evaluation.outputs import Evaluation, log_images, worst_rows, write_outputs  # noqa: E402
from src.evaluation.per_image_table import per_image_rows  # noqa: E402
from src.evaluation.reliability import reliability_bins, reliability_diagram  # noqa: E402
from src.evaluation.summary import flat_metrics, print_table  # noqa: E402
from src.inference import InferenceOptions  # noqa: E402
from src.metrics import CalibrationError, PerImageScores, SegmentationMetrics  # noqa: E402
from src.module import SegmentationModule  # noqa: E402
from src.utils.build import build_datamodule, build_trainer  # noqa: E402
from src.utils.checkpoint import input_convention, model_from_checkpoint  # noqa: E402
from src.utils.errors import UserError  # noqa: E402
from src.utils.metric_config import build_metrics, check_metric_names  # noqa: E402
from src.visualization import confusion_matrix_image  # noqa: E402

log = logging.getLogger(__name__)

# eval always scores each image on its own: per_image.csv and the worst images come from it
PER_IMAGE = {"per_image": {"_target_": "src.metrics.PerImageScores"}}


def output_options(cfg: DictConfig) -> tuple[int, bool]:
    """`worst_k` (images drawn, >= 0) and `report` (write report.html), checked."""
    worst_k, report = cfg.worst_k, cfg.report
    if isinstance(worst_k, bool) or not isinstance(worst_k, int) or worst_k < 0:
        raise UserError(f"worst_k={worst_k!r}: expected the number of worst images to draw (>= 0)")
    if not isinstance(report, bool):
        raise UserError(f"report={report!r}: expected true or false")
    return worst_k, report


def evaluation_module(cfg: DictConfig, options: InferenceOptions) -> tuple[SegmentationModule, Any]:
    """The checkpoint's model in a SegmentationModule that evaluates (no loss, no optimiser), its data."""
    # a misspelt option of a metric fails here, before the checkpoint's model is built
    metrics = build_metrics(
        cfg.get("metrics"), cfg.data.num_classes, cfg.data.ignore_index, PER_IMAGE
    )
    model, hparams = model_from_checkpoint(cfg.ckpt_path, list(cfg.trust.model_targets))
    # the images are normalised as the checkpoint's model was trained to see them
    normalize = input_convention(hparams).normalize
    log.info("inputs normalised as in training: data.normalize=%s", normalize)
    datamodule = build_datamodule(cfg.data, splits=[cfg.data.val_split], normalize=normalize)
    if int(hparams["num_classes"]) != datamodule.num_classes:
        raise UserError(
            f"checkpoint {cfg.ckpt_path} predicts {hparams['num_classes']} classes but data.num_classes="
            f"{datamodule.num_classes}; evaluate it on the dataset it was trained for (data=...)"
        )
    module = SegmentationModule(
        model=model,
        loss=None,
        optimizer=None,
        num_classes=datamodule.num_classes,
        aux_weight=0.0,
        ignore_index=datamodule.ignore_index,
        class_names=datamodule.class_names,
        metrics=metrics,
        inference=options,
    )
    return module, datamodule


def collect(
    cfg: DictConfig,
    module: SegmentationModule,
    datamodule: Any,
    options: InferenceOptions,
    worst_k: int,
) -> Evaluation:
    """metrics.json's payload, the per-image table and the pictures, after trainer.test (rank 0)."""
    metrics, names = module.test_metrics, datamodule.class_names
    flat = flat_metrics(metrics, module.test_results, names, "test")
    rows = per_image_rows(metrics.last(PerImageScores), names)
    confmat = metrics.last(SegmentationMetrics)["confmat"]
    payload = {
        **flat,
        "ckpt_path": str(cfg.ckpt_path),
        "split": datamodule.val_split,
        "inference": {
            "mode": options.mode,
            "tta": options.tta,
            "scales": list(options.scales),
            "flip": options.flip,
        },
        "metrics": list(metrics.metrics),
        "class_names": list(names),
        "confusion_matrix": confmat.tolist(),
        "worst_images": worst_rows(rows, worst_k),
    }
    evaluation = Evaluation(payload, rows, confusion_matrix_image(confmat, names))
    calibration = metrics.last(CalibrationError)
    if calibration is not None:
        payload["reliability"] = reliability_bins(calibration)
        evaluation.reliability_image = reliability_diagram(
            payload["reliability"], flat["test/ECE"], flat["test/MCE"]
        )
    table = colour_table(OmegaConf.select(cfg, "data.palette"), datamodule.ignore_index)
    evaluation.failures = render_failures(
        module,
        datamodule.dataset(datamodule.val_split),
        rows,
        worst_k,
        options,
        datamodule.pad_multiple,
        datamodule.normalize,
        datamodule.ignore_index,
        table,
    )
    return evaluation


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Score `cfg.ckpt_path` on `data.val_split`; write the outputs (rank 0); return metrics.json's payload."""
    if not cfg.get("ckpt_path"):
        raise UserError(
            "ckpt_path is required: python src/eval.py ckpt_path=<run>/checkpoints/last.ckpt"
        )
    worst_k, report = output_options(cfg)
    L.seed_everything(cfg.seed, workers=True)
    options = InferenceOptions.from_config(OmegaConf.to_container(cfg.eval, resolve=True), "eval")
    module, datamodule = evaluation_module(cfg, options)
    trainer = build_trainer(cfg)
    trainer.test(module, datamodule=datamodule, verbose=False)
    if not trainer.is_global_zero:  # every process holds the summed scores; rank 0 writes them
        return flat_metrics(
            module.test_metrics, module.test_results, datamodule.class_names, "test"
        )
    evaluation = collect(cfg, module, datamodule, options, worst_k)
    output_dir = Path(cfg.paths.output_dir)
    title = f"{Path(cfg.ckpt_path).name} on split '{datamodule.val_split}'"
    print_table(evaluation.payload, datamodule.class_names, title, "test")
    write_outputs(output_dir, evaluation, datamodule.class_names, report)
    log_images(trainer.loggers, evaluation)
    log.info("test/mIoU = %s (output in %s)", evaluation.payload["test/mIoU"], output_dir)
    return evaluation.payload


@hydra.main(version_base="1.3", config_path="../conf", config_name="eval")
def main(cfg: DictConfig) -> float | None:
    """Hydra entry point; returns test/mIoU."""
    try:
        payload = evaluate(cfg)
    except UserError as err:
        raise SystemExit(f"seglab: error: {err}") from None
    return payload["test/mIoU"]


if __name__ == "__main__":
    try:
        check_metric_names(sys.argv[1:])
    except UserError as err:
        raise SystemExit(f"seglab: error: {err}") from None
    main()
