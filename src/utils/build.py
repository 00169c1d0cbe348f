"""Build a run's parts from the composed config: the one place train, eval, the benchmarks and tests call.

Every part is `hydra.utils.instantiate` of its config group; what only exists at run time is added
here and nowhere else: data-derived class weights (`loss.class_weights=auto`), the model and loss
handed to the module, the resolved config stored in checkpoints, and the callbacks and loggers
handed to the Trainer.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import hydra
import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from src.losses.common import LossConfigError, as_class_weights
from src.losses.composite import CompositeLoss
from src.models.complexity import complexity_summary
from src.utils.config_tree import LAUNCH_SECTIONS
from src.utils.errors import UserError, find_user_error

log = logging.getLogger(__name__)

# Arguments every loss term may take from the composite (a term receives those its signature names).
SHARED_LOSS_ARGS = ("ignore_index", "num_classes", "class_weights")
# Loggers whose package is an optional extra of seglab (pyproject.toml), by `_target_`.
LOGGER_EXTRAS = {
    "lightning.pytorch.loggers.MLFlowLogger": "mlflow",
    "lightning.pytorch.loggers.WandbLogger": "wandb",
}


@dataclass
class Run:
    """The parts of a training run, built from one config."""

    datamodule: L.LightningDataModule
    model: nn.Module
    loss: nn.Module
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


def _term_arguments(target: str, shared: Mapping[str, Any]) -> dict[str, Any]:
    """The shared arguments a term's constructor names (all of them if it takes **kwargs)."""
    parameters = inspect.signature(hydra.utils.get_object(target)).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return dict(shared)
    return {key: value for key, value in shared.items() if key in parameters}


def _build_term(name: str, spec: Any, shared: Mapping[str, Any]) -> tuple[nn.Module, float]:
    """`loss.<name>` -> (the term module, its weight in the sum)."""
    if not isinstance(spec, Mapping) or "_target_" not in spec:
        raise LossConfigError(f"loss.{name} must be a term config with a _target_, got {spec!r}")
    arguments = dict(spec)
    weight = float(arguments.pop("weight", 1.0))
    try:
        shared_here = _term_arguments(str(arguments["_target_"]), shared)
        term = hydra.utils.instantiate({**shared_here, **arguments})
    except Exception as err:
        user_error = find_user_error(err)
        if isinstance(user_error, LossConfigError):  # the term names its argument: prefix the path
            raise LossConfigError(f"loss.{name}.{user_error}") from None
        detail = str(err.__cause__ or err).splitlines()[0]
        raise LossConfigError(f"loss.{name} ({arguments['_target_']}): {detail}") from None
    if not callable(term):
        raise LossConfigError(f"loss.{name}: {arguments['_target_']} is not callable as term(logits, mask)")
    return term, weight


def composite_loss(
    ignore_index: int,
    num_classes: int,
    class_weights: Sequence[float] | None = None,
    fused: bool | str = "auto",
    **terms: Any,
) -> CompositeLoss:
    """The `_target_` of conf/loss/: every other key is a term (`_target_`, its arguments, `weight`).

    The shared arguments reach each term that takes them, so a user's own term joins with
    `'+loss.mine={_target_: mypkg.MyLoss, weight: 0.3}'` and nothing else. A term set to null
    is left out (`loss.dice=null`).
    """
    weights = as_class_weights(class_weights, int(num_classes))
    shared = {
        "ignore_index": int(ignore_index),
        "num_classes": int(num_classes),
        "class_weights": None if weights is None else weights.tolist(),
    }
    built = {name: _build_term(name, spec, shared) for name, spec in terms.items() if spec is not None}
    return CompositeLoss(
        terms={name: term for name, (term, _) in built.items()},
        weights={name: weight for name, (_, weight) in built.items()},
        ignore_index=int(ignore_index),
        class_weights=weights,
        fused=fused,
    )


def build_loss(loss_cfg: DictConfig, datamodule: Any = None) -> nn.Module:
    """Instantiate the loss, first computing data-derived class weights (`loss.class_weights=auto`...)."""
    spec = loss_cfg.get("class_weights")
    if not isinstance(spec, str):
        return hydra.utils.instantiate(loss_cfg)
    from src.losses.class_weights import resolve_class_weights

    if datamodule is None:
        raise LossConfigError(f"loss.class_weights={spec!r} needs the training data to compute them")
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
    return hydra.utils.instantiate(loss_cfg, class_weights=weights)


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


def build_module(cfg: DictConfig, model: nn.Module, loss: nn.Module) -> L.LightningModule:
    """`instantiate(cfg.module)` around the model and loss, with the resolved config for checkpoints."""
    config = plain_config(cfg)
    if cfg.get("model_size_at"):
        config["model_size"] = model_size(model, cfg.model_size_at)  # TensorBoard's HPARAMS tab
    # a partial: `config` is also the name of instantiate's own first parameter
    make_module = hydra.utils.instantiate(cfg.module, _partial_=True)
    return make_module(model=model, loss=loss, config=config)


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
    trainer = hydra.utils.instantiate(cfg.trainer, **overrides)
    warn_if_cpu_bf16_is_emulated(trainer)
    return trainer


def build_run(cfg: DictConfig, trainer: bool = True) -> Run:
    """Datamodule, model, loss, module and (unless `trainer=False`) Trainer of a training config."""
    datamodule = build_datamodule(cfg.data)  # a wrong data.root fails here, before any model is built
    loss = build_loss(cfg.loss, datamodule)
    model = hydra.utils.instantiate(cfg.model)
    module = build_module(cfg, model, loss)
    return Run(datamodule, model, loss, module, build_trainer(cfg) if trainer else None)
