"""Train a segmentation model: compose the config, instantiate the parts, fit.

python src/train.py [group=option ...] [key=value ...]    (see conf/train.yaml)
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

# `python src/train.py` puts src/ on sys.path, not the repository root that holds the package.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import hydra  # noqa: E402
import lightning as L  # noqa: E402
from hydra.core.hydra_config import HydraConfig  # noqa: E402
from hydra.types import RunMode  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from src.callbacks import AutoSyncBatchNorm, fault_injection_callbacks  # noqa: E402
from src.models.complexity import complexity_summary  # noqa: E402
from src.segmentation_module import SegmentationModule  # noqa: E402
from src.utils import ddp  # noqa: E402
from src.utils.checkpoint import verify_checkpoint  # noqa: E402
from src.utils.errors import exit_on_user_error  # noqa: E402
from src.utils.instantiate import build_callbacks, build_loggers, build_model, plain_config  # noqa: E402

log = logging.getLogger(__name__)


def build_loss(cfg: DictConfig, datamodule: Any) -> Any:
    """Instantiate the loss, first computing data-derived class weights (`loss.class_weights=auto`...)."""
    spec = cfg.loss.get("class_weights")
    if not isinstance(spec, str):
        return hydra.utils.instantiate(cfg.loss)
    from src.losses.class_weights import resolve_class_weights

    weights = resolve_class_weights(
        spec,
        datamodule.train_mask_paths(),
        num_classes=datamodule.num_classes,
        ignore_index=datamodule.ignore_index,
        cache_dir=datamodule.root,
        split=datamodule.train_split,
        class_names=datamodule.class_names,
        decode_mask=datamodule.decoder,
    )
    return hydra.utils.instantiate(cfg.loss, class_weights=weights)


def build_trainer(cfg: DictConfig) -> L.Trainer:
    """Instantiate the Trainer with the configured callbacks and loggers.

    `trainer.sync_batchnorm` is applied by `AutoSyncBatchNorm`, only where torch can: DDP on GPUs.
    """
    callbacks = build_callbacks(cfg.get("callbacks")) + fault_injection_callbacks()
    if cfg.trainer.get("sync_batchnorm"):
        callbacks.append(AutoSyncBatchNorm())
    return hydra.utils.instantiate(
        cfg.trainer,
        callbacks=callbacks,
        logger=build_loggers(cfg.get("logger")),
        sync_batchnorm=False,
    )


def log_model_size(model: Any, datamodule: Any) -> dict[str, float]:
    """Log parameters and GFLOPs at the training crop size (console here; TensorBoard via hparams)."""
    crop = getattr(datamodule.augment, "crop_size", None) or 512
    stats = complexity_summary(model, (int(crop), int(crop)))
    log.info(
        "model: %.2fM parameters (%.2fM trainable), %.2f GFLOPs per %dx%d image",
        stats["params_M"],
        stats["trainable_params_M"],
        stats["gflops"],
        crop,
        crop,
    )
    return stats


def train(cfg: DictConfig) -> dict[str, float]:
    """Fit the configured model; return the final logged metrics."""
    # a missing or unsafe checkpoint fails now, and its payload never runs
    verify_checkpoint(cfg.get("ckpt_path"))
    L.seed_everything(cfg.seed, workers=True)
    datamodule = hydra.utils.instantiate(cfg.data)
    datamodule.prepare_data()
    datamodule.check_layout()  # a wrong data.root fails here, before any model is built
    loss = build_loss(cfg, datamodule)
    model, runtime = build_model(cfg.model)
    config = plain_config(cfg)
    config["model_size"] = log_model_size(model, datamodule)  # shown in TensorBoard's HPARAMS tab
    module = SegmentationModule(
        model=model,
        loss=loss,
        optimizer=hydra.utils.instantiate(cfg.optim),
        num_classes=datamodule.num_classes,
        ignore_index=datamodule.ignore_index,
        class_names=datamodule.class_names,
        scheduler=dict(cfg.scheduler),
        channels_last=bool(runtime["channels_last"]),
        compile=bool(runtime["compile"]),
        config=config,
    )
    trainer = build_trainer(cfg)
    trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"), weights_only=True)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
    if trainer.is_global_zero:
        log.info(
            "best val/mIoU = %.4f (output in %s)",
            metrics.get("val/mIoU_best", float("nan")),
            cfg.paths.output_dir,
        )
    return metrics


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    """Hydra entry point; returns `optimized_metric` for sweepers."""
    ddp.install(__file__)  # DDP children join this job as a single run (see src/utils/ddp.py)
    # In a sweep, one job's mistake fails that job (Hydra reports it and the sweep goes on);
    # otherwise it is one clear line, no traceback.
    with exit_on_user_error(reraise=HydraConfig.get().mode == RunMode.MULTIRUN), ddp.job_scope():
        metrics = train(cfg)
    return metrics.get(cfg.get("optimized_metric"))


if __name__ == "__main__":
    main()
