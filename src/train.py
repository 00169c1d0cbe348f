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
from omegaconf import DictConfig  # noqa: E402

from src.segmentation_module import SegmentationModule  # noqa: E402
from src.utils.errors import UserError  # noqa: E402
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
    )
    return hydra.utils.instantiate(cfg.loss, class_weights=weights)


def train(cfg: DictConfig) -> dict[str, float]:
    """Fit the configured model; return the final logged metrics."""
    L.seed_everything(cfg.seed, workers=True)
    datamodule = hydra.utils.instantiate(cfg.data)
    datamodule.prepare_data()
    datamodule.check_layout()  # a wrong data.root fails here, before any model is built
    loss = build_loss(cfg, datamodule)
    model, runtime = build_model(cfg.model)
    module = SegmentationModule(
        model=model,
        loss=loss,
        optimizer=hydra.utils.instantiate(cfg.optim),
        num_classes=datamodule.num_classes,
        ignore_index=datamodule.ignore_index,
        class_names=datamodule.class_names,
        scheduler=dict(cfg.scheduler),
        channels_last=bool(runtime["channels_last"]),
        config=plain_config(cfg),
    )
    trainer: L.Trainer = hydra.utils.instantiate(
        cfg.trainer, callbacks=build_callbacks(cfg.get("callbacks")), logger=build_loggers(cfg.get("logger"))
    )
    trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
    if trainer.is_global_zero:
        log.info("best val/mIoU = %.4f (output in %s)", metrics.get("val/mIoU_best", float("nan")), cfg.paths.output_dir)
    return metrics


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    """Hydra entry point; returns `optimized_metric` for sweepers."""
    try:
        metrics = train(cfg)
    except UserError as err:
        # A user's mistake: one clear line, no traceback.
        raise SystemExit(f"seglab: error: {err}") from None
    return metrics.get(cfg.get("optimized_metric"))


if __name__ == "__main__":
    main()
