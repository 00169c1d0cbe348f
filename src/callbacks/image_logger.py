"""Lightning callback: each validation epoch, show every logger that takes images what the model predicts.

Logs a grid of a fixed set of validation samples (image, ground truth, prediction in palette
colours), the row-normalised confusion matrix of the epoch and, when the metrics include
calibration, its reliability diagram as images: to TensorBoard as images at the step of the epoch's
scalars, to MLflow as artifacts `val/samples/epoch_003.png` (and `val/confusion_matrix/...`,
`val/reliability/...`), to W&B as images. CSV takes none. Per-class IoU and the learning rate are
scalars logged by the module and LearningRateMonitor.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.loggers import Logger, MLFlowLogger, TensorBoardLogger, WandbLogger

from src.data.palette import colour_table
from src.data.transforms import denormalize, padded_size
from src.metrics import CalibrationError, SegmentationMetrics
from src.visualization import confusion_matrix_image, sample_grid

GRID_TAG = "val/samples"
CONFUSION_TAG = "val/confusion_matrix"
RELIABILITY_TAG = "val/reliability"

# (logger, tag, RGB image H x W x 3 uint8, step, epoch)
ImageWriter = Callable[[Any, str, np.ndarray, int, int], None]


def mlflow_artifact_path(tag: str, epoch: int) -> str:
    """Where an epoch's image lies among the run's MLflow artifacts: `val/samples/epoch_003.png`."""
    return f"{tag}/epoch_{epoch:03d}.png"


def to_tensorboard(logger: TensorBoardLogger, tag: str, image: np.ndarray, step: int, epoch: int) -> None:
    """An image at `step`, beside the epoch's val scalars."""
    logger.experiment.add_image(tag, image, step, dataformats="HWC")


def to_mlflow(logger: MLFlowLogger, tag: str, image: np.ndarray, step: int, epoch: int) -> None:
    """A PNG artifact per epoch."""
    logger.experiment.log_image(logger.run_id, image, artifact_file=mlflow_artifact_path(tag, epoch))


def to_wandb(logger: WandbLogger, tag: str, image: np.ndarray, step: int, epoch: int) -> None:
    """A W&B image under `tag`, at the trainer step of the epoch's val scalars."""
    logger.log_image(key=tag, images=[image], step=step)


IMAGE_WRITERS: tuple[tuple[type[Logger], ImageWriter], ...] = (
    (TensorBoardLogger, to_tensorboard),
    (MLFlowLogger, to_mlflow),
    (WandbLogger, to_wandb),
)


def image_writers(loggers: Sequence[Logger]) -> list[tuple[Logger, ImageWriter]]:
    """The loggers that take images, each with the function that sends one to it."""
    return [
        (logger, writer)
        for logger in loggers
        for kind, writer in IMAGE_WRITERS
        if isinstance(logger, kind)
    ]


class SegmentationImageLogger(L.Callback):
    """Logs `val/samples` (first `num_samples` validation images) and `val/confusion_matrix` to every image logger."""

    def __init__(
        self,
        pad_multiple: int,
        num_samples: int = 4,
        palette: Sequence[Sequence[int]] | None = None,
        ignore_index: int = 255,
        normalize: str = "imagenet",
    ) -> None:
        self.num_samples = int(num_samples)
        self.table = colour_table(palette, ignore_index)
        self.pad_multiple = int(pad_multiple)  # each sample is predicted at its size padded as validation pads it
        self.normalize = normalize
        # (normalised image at its padded size, mask at original size): the first validation
        # batches, which an unshuffled loader gives in the same order every epoch.
        self.samples: list[tuple[torch.Tensor, torch.Tensor]] = []

    def on_validation_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        """Keep copies of the first validation samples (once per run)."""
        if (
            len(self.samples) >= self.num_samples
            or not isinstance(batch, dict)
            or "sizes" not in batch
        ):
            return
        for image, mask, (height, width) in zip(
            batch["image"], batch["mask"], batch["sizes"].tolist(), strict=True
        ):
            if len(self.samples) >= self.num_samples:
                break
            padded_h, padded_w = padded_size(height, width, self.pad_multiple)
            self.samples.append(
                (
                    image[:, :padded_h, :padded_w].detach().cpu(),
                    mask[:height, :width].detach().cpu(),
                )
            )

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Draw and log both images (rank 0; after the module has computed the epoch's metrics)."""
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        writers = image_writers(trainer.loggers)
        if not writers:
            return
        images = {}
        if self.samples:
            images[GRID_TAG] = self.grid(pl_module)
        images.update(self.metric_images(pl_module))
        # The step Lightning gives this epoch's val/* scalars, so images and numbers line up.
        step = getattr(trainer.fit_loop.epoch_loop, "_batches_that_stepped", trainer.global_step)
        for logger, write in writers:
            for tag, image in images.items():
                write(logger, tag, image, step, trainer.current_epoch)

    @staticmethod
    def metric_images(pl_module: L.LightningModule) -> dict[str, np.ndarray]:
        """The epoch's confusion matrix and, with calibration among the metrics, its reliability diagram."""
        from src.evaluation.reliability import reliability_bins, reliability_diagram

        metrics = getattr(pl_module, "val_metrics", None)
        names = getattr(pl_module, "class_names", None)
        if metrics is None or names is None:
            return {}
        images = {}
        confusion = metrics.last(SegmentationMetrics)
        if confusion is not None:
            images[CONFUSION_TAG] = confusion_matrix_image(confusion["confmat"], names)
        calibration = metrics.last(CalibrationError)
        if calibration is not None:
            ece, mce = (float(calibration[key]) for key in ("ECE", "MCE"))
            images[RELIABILITY_TAG] = reliability_diagram(reliability_bins(calibration), ece, mce)
        return images

    @torch.no_grad()
    def grid(self, pl_module: L.LightningModule) -> Any:
        """Predict the stored samples with the current weights and lay them out side by side."""
        was_training = pl_module.training
        pl_module.eval()
        rows = []
        for image, mask in self.samples:
            logits = pl_module(image.unsqueeze(0).to(pl_module.device, pl_module.dtype))
            prediction = logits.argmax(1)[0, : mask.shape[0], : mask.shape[1]]
            rows.append(
                (
                    denormalize(image[:, : mask.shape[0], : mask.shape[1]], self.normalize),
                    mask.numpy(),
                    prediction.cpu().numpy(),
                )
            )
        pl_module.train(was_training)
        return sample_grid(rows, self.table)
