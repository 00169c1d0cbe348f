"""The LightningModule: model + loss + the configured metric set + optimiser and LR schedule.

Built by `src.utils.build.build_module` from `conf/module/` (`instantiate(cfg.module, model=..., loss=...,
metrics=...)`): the optimiser and the LR schedule arrive as Hydra partials, completed here with the
parameters and the run's length, which only the running trainer knows. Validation (`val/*`) and
`src/eval.py` (`trainer.test`, `test/*`) score through the same metric set and the same logging;
eval's test step predicts in the configured inference mode (whole, slide, TTA).
"""

from __future__ import annotations

import bisect
import copy
import inspect
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import lightning as L
import torch
from torch import nn
from torch.optim.lr_scheduler import PolynomialLR

from src.inference import InferenceOptions, probabilities, segment_padded_scores
from src.metrics import MetricSet, SegmentationMetrics
from src.models.contract import auxiliary_logits, main_logits
from src.utils.errors import UserError
from src.utils.hparams import log_run_config
from src.utils.next_steps import newest_checkpoint

log = logging.getLogger(__name__)

OptimizerFactory = Callable[..., torch.optim.Optimizer]
SchedulerFactory = Callable[..., torch.optim.lr_scheduler.LRScheduler]


class NonFiniteLossError(UserError, FloatingPointError):
    """The training loss became NaN or infinite; the run stops before the optimiser applies it."""


def parameter_groups(
    model: nn.Module, bias_lr_factor: float, bias_weight_decay: float | None
) -> list[dict[str, Any]]:
    """Trainable parameters, biases in a group of their own when they train differently.

    Caffe's `lr_mult: 2, decay_mult: 0` on biases (the FCN reference recipe) is
    `bias_lr_factor=2, bias_weight_decay=0`; the group's `lr_factor` is applied once the
    optimiser has filled in its defaults.
    """
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if bias_lr_factor == 1.0 and bias_weight_decay is None:
        return [{"params": [p for _, p in named]}]
    biases = [p for n, p in named if n.endswith("bias")]
    others = [p for n, p in named if not n.endswith("bias")]
    bias_group: dict[str, Any] = {"params": biases, "lr_factor": float(bias_lr_factor)}
    if bias_weight_decay is not None:
        bias_group["weight_decay"] = float(bias_weight_decay)
    return [{"params": others}, bias_group]


def build_optimizer(factory: OptimizerFactory, groups: list[dict[str, Any]]) -> torch.optim.Optimizer:
    """The configured optimiser over `groups`, each group's `lr_factor` multiplied into its lr."""
    optimizer = factory(params=groups)
    for group in optimizer.param_groups:
        group["lr"] = group["lr"] * group.pop("lr_factor", 1.0)
    return optimizer


def build_schedule(
    factory: SchedulerFactory | None, optimizer: torch.optim.Optimizer, total_steps: int
) -> torch.optim.lr_scheduler.LRScheduler | None:
    """Bind a scheduler partial to the optimiser and the run's length (None: a fixed LR).

    A schedule that takes `total_iters` and leaves it out gets the steps it spans: the whole run,
    or, inside `SequentialLR`, the steps after its milestone (poly after a linear warm-up).
    """
    if factory is None:
        return None
    return _bind(factory, optimizer, 0, total_steps)


def _bind(factory: Any, optimizer: torch.optim.Optimizer, start: int, end: int) -> Any:
    keywords = dict(getattr(factory, "keywords", {}))
    function = getattr(factory, "func", factory)
    if "schedulers" in keywords:  # SequentialLR / ChainedScheduler: bind the children too
        keywords["schedulers"] = _bind_children(
            keywords["schedulers"], keywords.get("milestones"), optimizer, start, end
        )
    elif "total_iters" not in keywords and "total_iters" in inspect.signature(function).parameters:
        keywords["total_iters"] = max(1, end - start)
    return function(optimizer, **keywords)


def _bind_children(
    children: Sequence[Any], milestones: Sequence[int] | None, optimizer: Any, start: int, end: int
) -> list[Any]:
    """SequentialLR runs child i between milestones i-1 and i; ChainedScheduler runs all throughout."""
    if not milestones:
        return [_bind(child, optimizer, start, end) for child in children]
    bounds = [start, *(start + int(m) for m in milestones), end]
    return [_bind(child, optimizer, bounds[i], bounds[i + 1]) for i, child in enumerate(children)]


def polynomials(scheduler: Any, active: bool = True) -> list[tuple[PolynomialLR, bool]]:
    """Every PolynomialLR in `scheduler` (SequentialLR's children too), and whether it sets the LR now."""
    if isinstance(scheduler, PolynomialLR):
        return [(scheduler, active)]
    children = getattr(scheduler, "_schedulers", [])
    if isinstance(scheduler, torch.optim.lr_scheduler.SequentialLR):
        current = bisect.bisect_right(scheduler._milestones, scheduler.last_epoch)
        return [p for i, c in enumerate(children) for p in polynomials(c, active and i == current)]
    return [p for child in children for p in polynomials(child, active)]


def stretch_polynomial(schedule: PolynomialLR, total_iters: int, active: bool) -> None:
    """A restored PolynomialLR takes this run's length; if it drives the LR, the LR at its step follows.

    Its state (total_iters included) comes from the checkpoint, and its update is chainable
    (relative to the last LR), so without this a run resumed with a larger trainer.max_epochs
    would continue at the old schedule's end: LR 0.
    """
    schedule.total_iters = total_iters
    if not active:
        return
    factor = (1.0 - min(schedule.last_epoch, total_iters) / total_iters) ** schedule.power
    schedule._last_lr = [base * factor for base in schedule.base_lrs]
    for group, lr in zip(schedule.optimizer.param_groups, schedule._last_lr, strict=True):
        group["lr"] = lr


class SegmentationModule(L.LightningModule):
    """Trains any seglab model with any seglab loss and reports the literature's metrics."""

    def __init__(
        self,
        model: nn.Module,
        loss: nn.Module | None,
        optimizer: OptimizerFactory | None,
        num_classes: int,
        aux_weight: float,
        scheduler: SchedulerFactory | None = None,
        ignore_index: int = 255,
        class_names: Sequence[str] | None = None,
        channels_last: bool = False,
        compile: bool = False,
        bias_lr_factor: float = 1.0,
        bias_weight_decay: float | None = None,
        config: Mapping[str, Any] | None = None,
        metrics: MetricSet | None = None,
        inference: InferenceOptions | None = None,
    ) -> None:
        super().__init__()
        # Primitives only (config is the resolved run config as plain containers), so checkpoints
        # load with torch.load(weights_only=True); modules and callables are rebuilt from `config`.
        self.save_hyperparameters(
            ignore=["model", "loss", "optimizer", "scheduler", "metrics", "inference"]
        )
        self.model = model
        self.loss = loss
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.aux_weight = float(aux_weight)
        self.class_names = (
            list(class_names) if class_names else [f"class_{i}" for i in range(num_classes)]
        )
        self.channels_last = bool(channels_last)
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last)
        if compile:
            # nn.Module.compile compiles the call in place: parameter names (and so checkpoints)
            # stay those of the eager model, unlike wrapping it in torch.compile(model).
            self.model.compile()
        # metrics=None (a module built in code): the mIoU family, the config's default
        if metrics is None:
            metrics = MetricSet({"miou": SegmentationMetrics(num_classes, ignore_index)})
        self.val_metrics = metrics
        # trainer.test (src/eval.py) keeps its own states; `inference` is how it predicts
        self.test_metrics = copy.deepcopy(metrics)
        self.inference = inference or InferenceOptions()
        self.test_results: dict[str, dict[str, Any]] = {}
        self.best_miou = float("-inf")

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits (N, C, H, W) for normalised images (N, 3, H, W)."""
        return main_logits(self._forward_raw(images))

    def _forward_raw(self, images: torch.Tensor) -> torch.Tensor | dict[str, torch.Tensor]:
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return self.model(images)

    def _loss(
        self, out: torch.Tensor | dict[str, torch.Tensor], mask: torch.Tensor
    ) -> tuple[torch.Tensor, dict]:
        """Total loss and its logged parts; an auxiliary head (torchvision models) adds aux_weight x its loss."""
        total = self.loss(main_logits(out), mask)
        parts = dict(getattr(self.loss, "last_terms", {}))
        aux = auxiliary_logits(out)
        if aux is not None:
            aux_loss = self.loss(aux, mask)
            parts["aux"] = aux_loss.detach()
            total = total + self.aux_weight * aux_loss
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
        kept = f"the last good checkpoint {last} is kept" if last else "no checkpoint had been written yet"
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
        # softmax only when a metric reads probabilities (calibration): nothing extra otherwise
        probs = logits.float().softmax(1) if self.val_metrics.needs("probs") else None
        sizes = batch["sizes"].tolist() if "sizes" in batch else None
        self.val_metrics.update_padded(logits.argmax(1), batch["mask"], sizes, probs, batch.get("name"))

    def on_validation_epoch_end(self) -> None:
        """Log every metric of the set under val/ (mIoU, IoU/<class>, ...) and the best mIoU so far."""
        scores = self._log_metrics(self.val_metrics, "val")
        if not self.trainer.sanity_checking:
            self.best_miou = max(self.best_miou, float(scores["mIoU"].nan_to_num(0.0)))
            self.log("val/mIoU_best", self.best_miou)
            self.log("hp/val_mIoU_best", self.best_miou)

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        """Predict each image at its own size in the inference mode (padding undone) and score it."""
        sizes = batch["sizes"].tolist()
        names = batch.get("name") or [f"{batch_idx}_{i}" for i in range(len(sizes))]
        needs_probs = self.test_metrics.needs("probs")
        # batches are padded to the datamodule's multiple: each image is predicted on its own padded extent
        multiple = self.trainer.datamodule.pad_multiple
        scores = segment_padded_scores(self, batch["image"], sizes, self.inference, multiple)
        for image_scores, mask, (height, width), name in zip(scores, batch["mask"], sizes, names, strict=True):
            image_scores = image_scores.unsqueeze(0)
            probs = probabilities(image_scores, self.inference) if needs_probs else None
            self.test_metrics.update(image_scores.argmax(1), mask[None, :height, :width], probs, [name])

    def on_test_epoch_end(self) -> None:
        """Log every metric of the set under test/; `test_results` keeps each metric's full results."""
        self._log_metrics(self.test_metrics, "test")
        self.test_results = self.test_metrics.last_results

    def _log_metrics(self, metrics: MetricSet, stage: str) -> dict[str, torch.Tensor]:
        """Compute (summed over processes), log `<stage>/<name>`, reset; return the mIoU family's scores."""
        results = metrics.compute()
        metrics.reset()
        # Every process holds the same summed scores; sync_dist averages identical values (exact)
        # and keeps Lightning from warning about epoch-level values logged unsynced under DDP.
        for name, value in metrics.scalars(results, self.class_names).items():
            self.log(f"{stage}/{name}", value.float(), prog_bar=name == "mIoU", sync_dist=True)
        return metrics.last(SegmentationMetrics)

    def on_fit_start(self) -> None:
        """Log the run's config to every logger; TensorBoard's HPARAMS tab compares jobs on hp/val_mIoU_best."""
        log_run_config(self.loggers, self.hparams.get("config") or {}, {"hp/val_mIoU_best": 0.0})

    def configure_optimizers(self) -> dict[str, Any]:
        """The configured optimiser, and the LR schedule stepped every iteration."""
        if self.optimizer_factory is None:
            raise UserError("this module was built to evaluate (no optimizer): it cannot train")
        groups = parameter_groups(self.model, self.hparams.bias_lr_factor, self.hparams.bias_weight_decay)
        optimizer = build_optimizer(self.optimizer_factory, groups)
        total = max(1, int(self.trainer.estimated_stepping_batches))
        scheduler = build_schedule(self.scheduler_factory, optimizer, total)
        self._schedule_lengths = [p.total_iters for p, _ in polynomials(scheduler)]
        if scheduler is None:
            return {"optimizer": optimizer}
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_train_start(self) -> None:
        """On resume, the restored poly schedule takes this run's length (trainer.max_epochs may change)."""
        if not self.trainer.lr_scheduler_configs:
            return
        scheduler = self.trainer.lr_scheduler_configs[0].scheduler
        for (schedule, active), total in zip(polynomials(scheduler), self._schedule_lengths, strict=True):
            if schedule.total_iters != total:
                log.info("poly LR: %d steps in the checkpoint, %d in this run: stretched", schedule.total_iters, total)
                stretch_polynomial(schedule, total, active)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Keep the best mIoU across resumes."""
        checkpoint["best_miou"] = self.best_miou

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Restore the best mIoU of the interrupted run."""
        self.best_miou = float(checkpoint.get("best_miou", float("-inf")))

