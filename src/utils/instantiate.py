"""Build the run's parts from the composed config with hydra.utils.instantiate."""

from __future__ import annotations

from typing import Any

import hydra
import lightning as L
from omegaconf import DictConfig, OmegaConf
from torch import nn

# Keys of a model config that configure how the module runs it, not the nn.Module's constructor.
MODEL_RUNTIME_KEYS = ("channels_last", "compile")


def build_model(model_cfg: DictConfig) -> tuple[nn.Module, dict[str, Any]]:
    """Instantiate the model; return it with the runtime switches (channels_last, compile)."""
    ctor_cfg = OmegaConf.to_container(model_cfg, resolve=True)  # resolved here: it keeps ${data...} links
    runtime = {key: ctor_cfg.pop(key, False) for key in MODEL_RUNTIME_KEYS}
    return hydra.utils.instantiate(ctor_cfg), runtime


def build_callbacks(callbacks_cfg: DictConfig | None) -> list[L.Callback]:
    """Instantiate every callback of the `callbacks` group; entries set to null are skipped."""
    if not callbacks_cfg:
        return []
    return [hydra.utils.instantiate(cb) for cb in callbacks_cfg.values() if cb is not None and "_target_" in cb]


def build_loggers(logger_cfg: DictConfig | None) -> list[Any]:
    """Instantiate every logger of the `logger` group."""
    if not logger_cfg:
        return []
    return [hydra.utils.instantiate(lg) for lg in logger_cfg.values() if lg is not None and "_target_" in lg]


def plain_config(cfg: DictConfig) -> dict[str, Any]:
    """The resolved config as plain containers (what checkpoints store as hyper-parameters)."""
    without_hydra = OmegaConf.masked_copy(cfg, [key for key in cfg if key != "hydra"])
    return OmegaConf.to_container(without_hydra, resolve=True, throw_on_missing=False)
