"""The run's hyper-parameters for every logger: the resolved run config, shaped as each logger takes it.

The module calls `log_run_config` once, at fit start; Lightning's own hyper-parameter logging is off
(`trainer.enable_autolog_hparams: false`), so each logger gets the config once and in its own form:

- TensorBoard: the config with a real metric, so the HPARAMS tab compares jobs on it instead of
  Lightning's `hp_metric=-1` (Lightning #12494).
- MLflow: flat params (`model/backbone/width`) whose keys keep to the characters MLflow accepts
  (Lightning cuts each value at 250 characters, so the whole config is also the artifact
  `config.yaml`), and the run's `tags` as run tags.
- CSV, W&B and any other logger: the nested config as it is (CSV's hparams.yaml, W&B's run config;
  W&B's tags come from conf/logger/wandb.yaml).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from lightning.pytorch.loggers import Logger, MLFlowLogger, TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only

# MLflow keys: alphanumerics, `_ - . /` and spaces (colons too, but not on Windows servers), at most
# 250 characters, and no path that normalises to another name (`a//b`, `./a`, `../a`).
MLFLOW_KEY_CHARACTER = re.compile(r"[^\w\-./ ]")
MLFLOW_KEY_LENGTH = 250
# The value of a run tag named by one of the run's `tags` (MLflow's tags are key-value pairs).
MLFLOW_TAG_VALUE = "true"


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings as one level, keys joined with '/' (`model/backbone/width`)."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, f"{name}/"))
        else:
            flat[name] = value
    return flat


def mlflow_key(name: str) -> str:
    """`name` as a key MLflow accepts: other characters and `.`/`..` parts become '_', empty parts go."""
    cleaned = MLFLOW_KEY_CHARACTER.sub("_", str(name))[:MLFLOW_KEY_LENGTH]
    parts = ["_" if part.strip(".") == "" else part for part in cleaned.split("/") if part]
    return "/".join(parts) or "_"


def mlflow_params(config: Mapping[str, Any]) -> dict[str, str]:
    """The config as MLflow params: one level, valid keys, values as text."""
    return {mlflow_key(key): str(value) for key, value in flatten(config).items()}


def log_to_mlflow(logger: MLFlowLogger, config: Mapping[str, Any]) -> None:
    """Params, the whole config as `config.yaml`, and each of the config's `tags` as a run tag."""
    logger.log_hyperparams(mlflow_params(config))
    logger.experiment.log_dict(logger.run_id, dict(config), "config.yaml")
    for tag in config.get("tags") or ():
        logger.experiment.set_tag(logger.run_id, mlflow_key(tag), MLFLOW_TAG_VALUE)


@rank_zero_only
def log_run_config(
    loggers: Iterable[Logger], config: Mapping[str, Any], tensorboard_metrics: Mapping[str, float]
) -> None:
    """Send the resolved run config to every logger; TensorBoard registers `tensorboard_metrics` with it."""
    for logger in loggers:
        if isinstance(logger, TensorBoardLogger):
            logger.log_hyperparams(dict(config), dict(tensorboard_metrics))
        elif isinstance(logger, MLFlowLogger):
            log_to_mlflow(logger, config)
        else:
            logger.log_hyperparams(dict(config))
        logger.save()  # CSV writes hparams.yaml here
