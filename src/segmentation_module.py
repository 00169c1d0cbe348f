"""The LightningModule: model + composite loss + confusion-matrix metrics + optimiser/poly LR."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from torch import nn

from src.metrics import SegmentationMetrics
from src.utils.errors import UserError

OptimizerFactory = Callable[..., torch.optim.Optimizer]


class NonFiniteLossError(UserError, FloatingPointError):
    """The training loss became NaN or infinite; the run stops before the optimiser applies it."""


def newest_checkpoint(trainer: L.Trainer) -> str | None:
    """The most recently written checkpoint file of the trainer's checkpoint callbacks, if any."""
    paths = {
        getattr(callback, attr, "")
        for callback in trainer.checkpoint_callbacks
        for attr in ("last_model_path", "best_model_path")
    }
    existing = [path for path in paths if path and os.path.isfile(path)]
    return max(existing, key=os.path.getmtime) if existing else None


class SegmentationModule(L.LightningModule):
    """Trains any seglab model with any seglab loss and reports the literature's metrics."""

    def __init__(
        self,
        model: nn.Module,
        loss: nn.Module,
        optimizer: OptimizerFactory,
        num_classes: int,
        ignore_index: int = 255,
        class_names: Sequence[str] | None = None,
        scheduler: Mapping[str, Any] | None = None,
        channels_last: bool = False,
        compile: bool = False,
        config: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        # Primitives only (config is the resolved run config as plain containers), so checkpoints
        # load with torch.load(weights_only=True); modules and callables are rebuilt from `config`.
        self.save_hyperparameters(ignore=["model", "loss", "optimizer"])
        self.model = model
        self.loss = loss
        self.optimizer_factory = optimizer
        self.class_names = (
            list(class_names) if class_names else [f"class_{i}" for i in range(num_classes)]
        )
        self.scheduler_cfg = dict(scheduler or {"name": "poly", "power": 0.9})
        self.channels_last = channels_last
        if channels_last:
            self.model.to(memory_format=torch.channels_last)
        if compile:
            # nn.Module.compile compiles the call in place: parameter names (and so checkpoints)
            # stay those of the eager model, unlike wrapping it in torch.compile(model).
            self.model.compile()
        self.val_metrics = SegmentationMetrics(num_classes, ignore_index)
        self.best_miou = float("-inf")

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits (N, C, H, W) for normalised images (N, 3, H, W)."""
        out = self._forward_raw(images)
        return out["out"] if isinstance(out, dict) else out

    def _forward_raw(self, images: torch.Tensor) -> torch.Tensor | dict[str, torch.Tensor]:
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return self.model(images)

    def _loss(
        self, out: torch.Tensor | dict[str, torch.Tensor], mask: torch.Tensor
    ) -> tuple[torch.Tensor, dict]:
        """Total loss and its logged parts; an auxiliary head (torchvision models) adds aux_weight x its loss."""
        logits, aux = (out["out"], out.get("aux")) if isinstance(out, dict) else (out, None)
        total = self.loss(logits, mask)
        parts = dict(getattr(self.loss, "last_terms", {}))
        if aux is not None:
            aux_loss = self.loss(aux, mask)
            parts["aux"] = aux_loss.detach()
            total = total + getattr(self.model, "aux_weight", 0.4) * aux_loss
        return total, parts

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        """Loss on one batch; logs train/loss and train/loss_<term>."""
        loss, parts = self._loss(self._forward_raw(batch["image"]), batch["mask"])
        self._check_finite(loss, batch_idx)
        size = batch["mask"].shape[0]
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=size)
        for name, value in parts.items():
            self.log(f"train/loss_{name}", value, on_step=True, on_epoch=True, batch_size=size)
        return loss

    def _check_finite(self, loss: torch.Tensor, batch_idx: int) -> None:
        """Stop on a NaN/inf loss before backward, so no optimiser step (or checkpoint) sees it."""
        finite = bool(torch.isfinite(loss.detach()).all())
        # every rank must take the same decision, or the others would wait for it in all-reduce
        if self.trainer.strategy.reduce_boolean_decision(finite, all=True):
            return
        last = newest_checkpoint(self.trainer)
        kept = (
            f"the last good checkpoint {last} is kept"
            if last
            else "no checkpoint had been written yet"
        )
        raise NonFiniteLossError(
            f"non-finite training loss ({loss.detach().float().item()}) at global step {self.global_step} "
            f"(epoch {self.current_epoch}, batch {batch_idx}): stopped before this step's optimiser "
            f"update, without saving this state; {kept}. Lower optim.lr, use trainer.precision=32-true "
            "or check the data for NaN."
        )

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        """Loss and confusion-matrix update; padded pixels carry ignore_index, so they count nowhere."""
        logits = self(batch["image"])
        loss, parts = self._loss(logits, batch["mask"])
        size = batch["mask"].shape[0]
        self.log("val/loss", loss, on_epoch=True, sync_dist=True, batch_size=size)
        for name, value in parts.items():
            self.log(f"val/loss_{name}", value, on_epoch=True, sync_dist=True, batch_size=size)
        self.val_metrics.update(logits.argmax(1), batch["mask"])

    def on_validation_epoch_end(self) -> None:
        """Log mIoU, mAcc, aAcc, FWIoU, mDice, per-class IoU and the best mIoU so far."""
        scores = self.val_metrics.compute()
        self.val_metrics.reset()
        for name in ("mIoU", "mAcc", "aAcc", "FWIoU", "mDice"):
            self.log(f"val/{name}", scores[name].float(), prog_bar=name == "mIoU")
        for name, iou in zip(self.class_names, scores["IoU"], strict=True):
            self.log(f"val/IoU/{name}", iou.float())
        if not self.trainer.sanity_checking:
            self.best_miou = max(self.best_miou, float(scores["mIoU"].nan_to_num(0.0)))
            self.log("val/mIoU_best", self.best_miou)
            self.log("hp/val_mIoU_best", self.best_miou)

    def on_fit_start(self) -> None:
        """Log the run's hyper-parameters with a real metric, so TensorBoard's HPARAMS tab compares jobs."""
        params = dict(self.hparams.get("config") or {})
        for logger in self.loggers:
            if isinstance(logger, TensorBoardLogger):
                # Lightning's default writes hp_metric=-1 forever (Lightning #12494): register ours instead.
                logger.log_hyperparams(params, {"hp/val_mIoU_best": 0.0})

    def configure_optimizers(self) -> dict[str, Any]:
        """The configured optimiser with poly LR stepped every iteration."""
        optimizer = self.optimizer_factory(params=[p for p in self.parameters() if p.requires_grad])
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": self._scheduler(optimizer), "interval": "step"},
        }

    def _scheduler(self, optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LRScheduler:
        name = self.scheduler_cfg.get("name", "poly")
        if name != "poly":
            raise ValueError(f"scheduler.name={name!r} is not supported; expected 'poly'")
        total = max(1, int(self.trainer.estimated_stepping_batches))
        warmup = int(self.scheduler_cfg.get("warmup_iters", 0))
        poly = torch.optim.lr_scheduler.PolynomialLR(
            optimizer,
            total_iters=max(1, total - warmup),
            power=float(self.scheduler_cfg.get("power", 0.9)),
        )
        if warmup <= 0:
            return poly
        ramp = torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=1e-3, total_iters=warmup)
        return torch.optim.lr_scheduler.SequentialLR(optimizer, [ramp, poly], milestones=[warmup])

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Keep the best mIoU across resumes."""
        checkpoint["best_miou"] = self.best_miou

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Restore the best mIoU of the interrupted run."""
        self.best_miou = float(checkpoint.get("best_miou", float("-inf")))
