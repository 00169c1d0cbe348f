"""Build a run's parts from the composed config: the one place train, eval, the benchmarks and tests call.

Every part is `hydra.utils.instantiate` of its config group; what only exists at run time is added
here and nowhere else: the model and loss handed to the module, the resolved config stored in
checkpoints, and the callbacks and loggers handed to the Trainer. The loss itself, with its
data-derived class weights (`loss.class_weights=auto`), is built by src/utils/loss_config.py,
which imports no Lightning.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import hydra
import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from src.models.complexity import complexity_summary
from src.utils.config_tree import LAUNCH_SECTIONS
from src.utils.errors import UserError
from src.utils.lightning_console import quiet_lightning_notices
from src.utils.loss_config import build_loss
from src.utils.metric_config import build_metrics

log = logging.getLogger(__name__)

# Loggers whose package is an optional extra of seglab (pyproject.toml), by `_target_`.
LOGGER_EXTRAS = {
    "lightning.pytorch.loggers.MLFlowLogger": "mlflow",
    "lightning.pytorch.loggers.WandbLogger": "wandb",
}


@dataclass
class Run:
    """The parts of a training run, built from one config."""

    datamodule: L.LightningDataModule
    module: L.LightningModule
    trainer: L.Trainer | None


def plain_config(cfg: DictConfig) -> dict[str, Any]:
    """The resolved run config as plain containers (what checkpoints store as hyper-parameters);
    Hydra's and the sweep runner's sections are left out."""
    run_only = OmegaConf.masked_copy(cfg, [key for key in cfg if key not in LAUNCH_SECTIONS])
    return OmegaConf.to_container(run_only, resolve=True, throw_on_missing=False)


def build_datamodule(data_cfg: DictConfig, splits: Sequence[str] | None = None, **overrides: Any) -> Any:
    """The datamodule, its data prepared and the files of `splits` (default: train and val) checked.

    A wrong data.root or a missing split fails here, before any model is built.
    """
    datamodule = hydra.utils.instantiate(data_cfg, **overrides)
    datamodule.prepare_data()
    if splits is None:
        datamodule.check_layout()
    for split in splits or ():
        datamodule.split_pairs(split)
    return datamodule


def model_size(model: nn.Module, size: int | Sequence[int]) -> dict[str, float]:
    """Parameters and GFLOPs for a `size` input (a side, or [height, width]), logged at start (and stored in hparams)."""
    height, width = (int(size), int(size)) if isinstance(size, int | str) else (int(size[0]), int(size[1]))
    stats = complexity_summary(model, (height, width))
    log.info(
        "model: %.2fM parameters (%.2fM trainable), %.2f GFLOPs per %dx%d image",
        stats["params_M"],
        stats["trainable_params_M"],
        stats["gflops"],
        height,
        width,
    )
    return stats


def build_module(
    cfg: DictConfig, model: nn.Module, loss: nn.Module, metrics: Any = None
) -> L.LightningModule:
    """`instantiate(cfg.module)` around the model, loss and metric set, with the resolved config for checkpoints."""
    config = plain_config(cfg)
    if cfg.get("model_size_at"):
        config["model_size"] = model_size(model, cfg.model_size_at)  # TensorBoard's HPARAMS tab
    # a partial: `config` is also the name of instantiate's own first parameter
    make_module = hydra.utils.instantiate(cfg.module, _partial_=True)
    return make_module(model=model, loss=loss, config=config, metrics=metrics)


def build_callbacks(callbacks_cfg: DictConfig | None) -> list[L.Callback]:
    """Instantiate every callback of the `callbacks` group; entries set to null are skipped."""
    if not callbacks_cfg:
        return []
    return [
        hydra.utils.instantiate(cb) for cb in callbacks_cfg.values() if cb is not None and "_target_" in cb
    ]


def _missing_module(err: BaseException | None) -> ModuleNotFoundError | None:
    """The ModuleNotFoundError behind `err` (Hydra's instantiate wraps what a constructor raises)."""
    while err is not None and not isinstance(err, ModuleNotFoundError):
        err = err.__cause__
    return err


def build_logger(name: str, spec: DictConfig) -> Any:
    """Instantiate `logger.<name>`; a logger whose optional package is missing says which extra to install."""
    try:
        return hydra.utils.instantiate(spec)
    except Exception as err:
        missing = _missing_module(err)
        if missing is None:
            raise
        extra = LOGGER_EXTRAS.get(str(spec._target_))
        if extra is None:
            raise UserError(f"logger.{name} ({spec._target_}) cannot start: {missing}") from None
        raise UserError(
            f"logger.{name} needs seglab's '{extra}' extra, which is not installed: pip install -e '.[{extra}]'"
        ) from None


def build_loggers(logger_cfg: DictConfig | None) -> list[Any]:
    """Instantiate every logger of the `logger` group."""
    if not logger_cfg:
        return []
    return [
        build_logger(str(name), lg)
        for name, lg in logger_cfg.items()
        if lg is not None and "_target_" in lg
    ]


def warn_if_cpu_bf16_is_emulated(trainer: L.Trainer) -> None:
    """bf16 on a CPU without bf16 in oneDNN (AVX2 only) runs convolutions on ATen's reference kernels.

    It computes right but ~10x slower than fp32 (measured on a 2-core AMD EPYC: 2.6 against 25
    images/s), which a user asking for a speed switch should hear about.
    """
    on_cpu = trainer.strategy.root_device.type == "cpu"
    if on_cpu and "bf16" in str(trainer.precision) and not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        log.warning(
            "trainer.precision=%s on a CPU without bf16 support in oneDNN (%s): convolutions run on "
            "slow reference kernels, typically ~10x slower than trainer.precision=32-true",
            trainer.precision,
            torch.backends.cpu.get_cpu_capability(),
        )


def build_trainer(cfg: DictConfig, extra_callbacks: Sequence[L.Callback] = (), **overrides: Any) -> L.Trainer:
    """The Trainer of `cfg.trainer` with the configured callbacks (plus `extra_callbacks`) and loggers.

    `overrides` replace Trainer arguments; callbacks or loggers given there are not built from config
    (`extra_callbacks` join either list).
    """
    if "callbacks" not in overrides:
        overrides["callbacks"] = build_callbacks(cfg.get("callbacks"))
    if "logger" not in overrides:
        overrides["logger"] = build_loggers(cfg.get("logger"))
    overrides["callbacks"] = [*overrides["callbacks"], *extra_callbacks]
    quiet_lightning_notices()  # before the Trainer: it prints some of them as it starts
    trainer = hydra.utils.instantiate(cfg.trainer, **overrides)
    warn_if_cpu_bf16_is_emulated(trainer)
    return trainer


def build_run(cfg: DictConfig, trainer: bool = True) -> Run:
    """Datamodule, model, loss, module and (unless `trainer=False`) Trainer of a training config."""
    datamodule = build_datamodule(cfg.data)  # a wrong data.root fails here, before any model is built
    metrics = None  # a config without `metrics` (built in code): the module's mIoU family
    if cfg.get("metrics") is not None:  # a bad metric option fails here too
        metrics = build_metrics(cfg.metrics, datamodule.num_classes, datamodule.ignore_index)
    loss = build_loss(cfg.loss, datamodule)
    model = hydra.utils.instantiate(cfg.model)
    module = build_module(cfg, model, loss, metrics)
    return Run(datamodule, module, build_trainer(cfg) if trainer else None)
