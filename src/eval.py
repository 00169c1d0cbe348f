"""Evaluate a checkpoint on a dataset split: per-class table, metrics.json, confusion-matrix PNG.

python src/eval.py ckpt_path=<run>/checkpoints/last.ckpt [data=...] [data.val_split=val]
                   [eval.mode=whole|slide eval.crop_size=512 eval.stride=341] [eval.tta=true]
"""

from __future__ import annotations

import logging
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

# `python src/eval.py` puts src/ on sys.path, not the repository root that holds the package.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import hydra  # noqa: E402
import lightning as L  # noqa: E402
import torch  # noqa: E402
from omegaconf import DictConfig, OmegaConf  # noqa: E402
from PIL import Image  # noqa: E402
from torch import nn  # noqa: E402

from src.inference import InferenceOptions, segment_padded_batch  # noqa: E402
from src.metrics import SegmentationMetrics  # noqa: E402
from src.module import SUMMARY_METRICS  # noqa: E402
from src.utils.build import build_datamodule, build_trainer  # noqa: E402
from src.utils.checkpoint import input_convention, model_from_checkpoint  # noqa: E402
from src.utils.errors import UserError  # noqa: E402
from src.utils.files import write_json_atomic  # noqa: E402
from src.visualization import confusion_matrix_image  # noqa: E402

log = logging.getLogger(__name__)


class Evaluator(L.LightningModule):
    """Runs a trained model over validation batches in a chosen inference mode and scores it (`test/*`)."""

    def __init__(
        self,
        model: nn.Module,
        options: InferenceOptions,
        num_classes: int,
        ignore_index: int,
        class_names: Sequence[str],
        pad_multiple: int,
    ) -> None:
        super().__init__()
        self.model = model
        self.options = options
        self.pad_multiple = pad_multiple
        self.class_names = list(class_names)
        self.metrics = SegmentationMetrics(num_classes, ignore_index)
        self.scores: dict[str, torch.Tensor] = {}

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        """Predict every image at its own size (padding undone) and count it against its mask."""
        sizes = batch["sizes"].tolist()
        predictions = segment_padded_batch(
            self.model, batch["image"], sizes, self.options, self.pad_multiple
        )
        for prediction, mask, (height, width) in zip(
            predictions, batch["mask"], sizes, strict=True
        ):
            self.metrics.update(prediction, mask[:height, :width])

    def on_validation_epoch_end(self) -> None:
        """Compute the scores over every process and log them under test/."""
        self.scores = self.metrics.compute()
        self.scores["confmat"] = self.metrics.last_confmat
        # Every process holds the same summed scores; sync_dist averages identical values (exact)
        # and keeps Lightning from warning about epoch-level values logged unsynced under DDP.
        for name in SUMMARY_METRICS:
            self.log(f"test/{name}", self.scores[name].float(), sync_dist=True)
        for name, iou in zip(self.class_names, self.scores["IoU"], strict=True):
            self.log(f"test/IoU/{name}", iou.float(), sync_dist=True)


def _finite(value: torch.Tensor) -> float | None:
    number = float(value)
    return number if math.isfinite(number) else None  # JSON has no NaN: an undefined score is null


def flat_metrics(
    scores: dict[str, torch.Tensor], class_names: Sequence[str]
) -> dict[str, float | None]:
    """test/mIoU ..., test/IoU/<class>, test/Acc/<class>, test/Dice/<class> as plain numbers."""
    flat = {f"test/{name}": _finite(scores[name]) for name in SUMMARY_METRICS}
    for kind in ("IoU", "Acc", "Dice"):
        flat.update(
            {
                f"test/{kind}/{name}": _finite(v)
                for name, v in zip(class_names, scores[kind], strict=True)
            }
        )
    return flat


def print_table(scores: dict[str, torch.Tensor], class_names: Sequence[str], title: str) -> None:
    """A rich table: IoU, Acc and Dice per class (undefined: '-'), then the means."""
    from rich.console import Console
    from rich.table import Table

    def pct(value: torch.Tensor) -> str:
        return "-" if math.isnan(float(value)) else f"{100 * float(value):.2f}"

    table = Table(title=title)
    for header in ("class", "IoU", "Acc", "Dice"):
        table.add_column(header, justify="left" if header == "class" else "right")
    for index, name in enumerate(class_names):
        table.add_row(
            name, pct(scores["IoU"][index]), pct(scores["Acc"][index]), pct(scores["Dice"][index])
        )
    table.add_section()
    table.add_row("mean", pct(scores["mIoU"]), pct(scores["mAcc"]), pct(scores["mDice"]))
    table.add_row("frequency-weighted", pct(scores["FWIoU"]), "", "")
    table.add_row("pixel (aAcc)", "", pct(scores["aAcc"]), "")
    Console().print(table)


def write_outputs(
    output_dir: Path,
    payload: dict[str, Any],
    scores: dict[str, torch.Tensor],
    class_names: Sequence[str],
) -> None:
    """metrics.json and confusion_matrix.png (row-normalised, class names on the axes)."""
    write_json_atomic(output_dir / "metrics.json", payload)
    Image.fromarray(confusion_matrix_image(scores["confmat"], class_names)).save(
        output_dir / "confusion_matrix.png"
    )


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Score `cfg.ckpt_path` on `data.val_split`; write metrics.json and the confusion-matrix PNG; return the payload."""
    if not cfg.get("ckpt_path"):
        raise UserError(
            "ckpt_path is required: python src/eval.py ckpt_path=<run>/checkpoints/last.ckpt"
        )
    L.seed_everything(cfg.seed, workers=True)
    options = InferenceOptions.from_config(OmegaConf.to_container(cfg.eval, resolve=True), "eval")
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
    evaluator = Evaluator(
        model,
        options,
        datamodule.num_classes,
        datamodule.ignore_index,
        datamodule.class_names,
        pad_multiple=datamodule.pad_multiple,
    )
    trainer = build_trainer(cfg)
    trainer.validate(evaluator, datamodule=datamodule, verbose=False)
    payload = {
        **flat_metrics(evaluator.scores, datamodule.class_names),
        "ckpt_path": str(cfg.ckpt_path),
        "split": datamodule.val_split,
        "inference": {
            "mode": options.mode,
            "tta": options.tta,
            "scales": list(options.scales),
            "flip": options.flip,
        },
        "class_names": list(datamodule.class_names),
        "confusion_matrix": evaluator.scores["confmat"].tolist(),
    }
    if trainer.is_global_zero:
        print_table(
            evaluator.scores,
            datamodule.class_names,
            f"{Path(cfg.ckpt_path).name} on split '{datamodule.val_split}'",
        )
        write_outputs(Path(cfg.paths.output_dir), payload, evaluator.scores, datamodule.class_names)
        log.info(
            "test/mIoU = %.4f (output in %s)", float(evaluator.scores["mIoU"]), cfg.paths.output_dir
        )
    return payload


@hydra.main(version_base="1.3", config_path="../conf", config_name="eval")
def main(cfg: DictConfig) -> float | None:
    """Hydra entry point; returns test/mIoU."""
    try:
        payload = evaluate(cfg)
    except UserError as err:
        raise SystemExit(f"seglab: error: {err}") from None
    return payload["test/mIoU"]


if __name__ == "__main__":
    main()
