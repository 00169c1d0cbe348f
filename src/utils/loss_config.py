"""The Hydra glue of the loss: `conf/loss/`'s `_target_` and the class-weight step before it.

Kept apart from src/utils/build.py (which builds Trainers) so that `instantiate(cfg.loss)` imports
torch, Hydra and src/losses only: a user who takes seglab's loss into a loop of their own does
not pay for Lightning or torchmetrics (tests/test_loss_config.py checks `sys.modules`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import hydra
from omegaconf import DictConfig
from torch import nn

from src.losses.common import LossConfigError, as_class_weights
from src.losses.composite import CompositeLoss
from src.utils.instantiate import instantiate_part


def build_term(name: str, spec: Any, shared: Mapping[str, Any]) -> tuple[nn.Module, float]:
    """`loss.<name>` -> (the term module, its weight in the sum)."""
    if not isinstance(spec, Mapping) or "_target_" not in spec:
        raise LossConfigError(f"loss.{name} must be a term config with a _target_, got {spec!r}")
    arguments = dict(spec)
    weight = float(arguments.pop("weight", 1.0))
    term = instantiate_part(f"loss.{name}", arguments, shared, LossConfigError, LossConfigError)
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

    Each term's constructor gets the shared arguments whose names it declares, and no others, so
    a user's own term joins with `'+loss.mine={_target_: mypkg.MyLoss, weight: 0.3}'` whether or
    not it has an `__init__`. A term set to null is left out (`loss.dice=null`).
    """
    weights = as_class_weights(class_weights, int(num_classes))
    shared = {
        "ignore_index": int(ignore_index),
        "num_classes": int(num_classes),
        "class_weights": None if weights is None else weights.tolist(),
    }
    built = {name: build_term(name, spec, shared) for name, spec in terms.items() if spec is not None}
    return CompositeLoss(
        terms={name: term for name, (term, _) in built.items()},
        weights={name: weight for name, (_, weight) in built.items()},
        ignore_index=int(ignore_index),
        class_weights=weights,
        fused=fused,
    )


def build_loss(loss_cfg: DictConfig, datamodule: Any = None) -> nn.Module:
    """Instantiate the loss, first computing data-derived class weights (`loss.class_weights=auto`...).

    `datamodule` is any object with the training split's masks and their decoder (seglab's
    DataModules); it is needed only when `loss.class_weights` names a method.
    """
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
