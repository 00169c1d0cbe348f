"""The one checkpoint loader: tensors and primitives only, and only seglab's models rebuilt.

A `.ckpt` is a pickle; unpickling can run any code the file carries. seglab checkpoints hold only
tensors and plain hyper-parameters, so they load with `torch.load(weights_only=True)`, whose
restricted unpickler rejects every other global before anything is called.

That is not enough on its own: the run config stored in a checkpoint is plain strings and numbers,
and rebuilding the model from it with `hydra.utils.instantiate` would call whatever `_target_` the
file names (`numpy.savetxt`, `torch.save`: a file of the author's choosing written anywhere).
Hydra's own block list is, by its own account, best-effort. So the stored model config is
checked before anything is imported or built: every `_target_` (nested ones too) must be a model
class seglab ships (the `_target_`s under conf/model/) or one the user allows on the command line
(`trust.model_targets=[mypkg.Net]`); Hydra's other special keys are refused; every other value
must be a primitive or a list or dict of them. The model is then built here, not by Hydra's instantiate, so
no stored string is ever resolved as an interpolation. Nothing else a checkpoint stores (data,
loss, optimiser, callbacks) is built: it is read as values.

eval, predict, export and resume load through `load_checkpoint`, `model.init_from` and backbone
weight files through the same `src.utils.files.load_tensor_file`; eval, predict and export
rebuild models through `model_from_checkpoint`.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from src.utils.errors import UserError
from src.utils.files import load_tensor_file

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"
CONF_MODEL_DIR = CONF_DIR / "model"
# Hydra keys that change what instantiate calls or how: refused in a stored config
HYDRA_SPECIAL_KEYS = ("_args_", "_partial_", "_recursive_", "_convert_")
PRIMITIVES = (str, int, float, bool, type(None))
TRUST_HINT = (
    "If it is your own model class and you trust this file, allow it on the command line: "
    "trust.model_targets=[{target}]"
)


class UntrustedCheckpointError(UserError):
    """A checkpoint's stored model config names something seglab will not build from a file."""


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """A seglab/Lightning checkpoint, loaded with weights_only=True; anything else raises UserError."""
    checkpoint = load_tensor_file(path, "ckpt_path", map_location)
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise UserError(
            f"checkpoint {path} has no 'state_dict'; expected a Lightning checkpoint written by src/train.py"
        )
    return checkpoint


def checkpoint_config(checkpoint: dict[str, Any], path: str | Path) -> dict[str, Any]:
    """The resolved run config stored in the checkpoint's hyper-parameters (plain values)."""
    config = checkpoint.get("hyper_parameters", {}).get("config")
    if not isinstance(config, dict) or not isinstance(config.get("model"), dict):
        raise UserError(
            f"checkpoint {path} stores no run config (hyper_parameters.config.model); expected one written by src/train.py"
        )
    return config


def _targets_in(node: Any) -> Iterable[str]:
    """Every `_target_` value in a parsed YAML tree."""
    if isinstance(node, Mapping):
        for key, value in node.items():
            if key == "_target_" and isinstance(value, str):
                yield value
            else:
                yield from _targets_in(value)
    elif isinstance(node, list):
        for value in node:
            yield from _targets_in(value)


@functools.cache
def shipped_model_targets() -> frozenset[str]:
    """The model classes seglab ships: every `_target_` in conf/model/ (presets and their backbones)."""
    files = sorted(CONF_MODEL_DIR.rglob("*.yaml"))
    return frozenset(t for file in files for t in _targets_in(yaml.safe_load(file.read_text()) or {}))


def check_model_config(model_cfg: Any, path: str | Path, trusted: Sequence[str] = ()) -> None:
    """Raise UntrustedCheckpointError unless the stored model config only names allowed classes and plain values."""
    if not isinstance(model_cfg, dict) or "_target_" not in model_cfg:
        raise UntrustedCheckpointError(f"checkpoint {path}: the stored model config has no _target_")
    values = list(_walk(model_cfg, "model"))
    for key_path, key, value in values:  # Hydra's switches and non-plain values first: they change any call
        where = f"checkpoint {path}: {key_path}"
        if key in HYDRA_SPECIAL_KEYS:
            raise UntrustedCheckpointError(
                f"{where} uses Hydra's {key}, which a stored model config may not hold (only _target_ "
                "and the model's own arguments are read from a checkpoint); nothing was built"
            )
        if not isinstance(value, PRIMITIVES + (dict, list)) or (key == "_target_" and not isinstance(value, str)):
            raise UntrustedCheckpointError(
                f"{where} holds a {type(value).__name__}; a stored model config may hold only strings, "
                "numbers, booleans, null and lists or dicts of them; nothing was built"
            )
    allowed = shipped_model_targets() | set(trusted)
    for key_path, key, value in values:
        if key == "_target_" and value not in allowed:
            raise UntrustedCheckpointError(
                f"checkpoint {path}: {key_path}={value!r} is not a model class seglab ships, so nothing "
                f"was built from this checkpoint. Accepted: {', '.join(sorted(shipped_model_targets()))}, "
                "and classes allowed with trust.model_targets. " + TRUST_HINT.format(target=value)
            )


def _walk(node: Any, key_path: str, key: Any = None) -> Iterable[tuple[str, Any, Any]]:
    """(key path, key, value) for every value of a nested config, the container itself first."""
    yield key_path, key, node
    if isinstance(node, dict):
        for child_key, child in node.items():
            if not isinstance(child_key, str):
                yield f"{key_path}[{child_key!r}]", child_key, object()  # not a config key: refused
                continue
            yield from _walk(child, f"{key_path}.{child_key}", child_key)
    elif isinstance(node, list):
        for index, child in enumerate(node):
            yield from _walk(child, f"{key_path}[{index}]", index)


def build_checked(node: Any) -> Any:
    """Build a config checked by `check_model_config`: `_target_` dicts called with their built arguments."""
    from hydra.utils import (
        get_object,  # here: models load weight files through this module, Hydra-free
    )

    if isinstance(node, dict):
        arguments = {key: build_checked(value) for key, value in node.items() if key != "_target_"}
        return get_object(node["_target_"])(**arguments) if "_target_" in node else arguments
    if isinstance(node, list):
        return [build_checked(value) for value in node]
    return node


def without_weight_sources(model_cfg: dict[str, Any]) -> dict[str, Any]:
    """The model config with the class's `weight_keys` set to None: the checkpoint's tensors replace them."""
    from hydra.utils import get_object

    keys = getattr(get_object(model_cfg["_target_"]), "weight_keys", ())
    cleaned = dict(model_cfg)
    for dotted in keys:
        *parents, last = dotted.split(".")
        node = cleaned
        for parent in parents:
            if not isinstance(node.get(parent), dict):
                break
            node[parent] = dict(node[parent])  # copy on the way down: the checkpoint's dict stays intact
            node = node[parent]
        else:
            if last in node:
                node[last] = None
    return cleaned


def model_state_dict(checkpoint: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The model's tensors: the Lightning module's `model.` entries with the prefix removed."""
    prefix = "model."
    return {
        key[len(prefix) :]: value
        for key, value in checkpoint["state_dict"].items()
        if key.startswith(prefix)
    }


def model_from_checkpoint(
    path: str | Path, trusted_targets: Sequence[str] = (), map_location: str | torch.device = "cpu"
) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the trained model (in eval mode) after checking its stored config; return it with the hyper-parameters."""
    checkpoint = load_checkpoint(path, map_location)
    model_cfg = checkpoint_config(checkpoint, path)["model"]
    check_model_config(model_cfg, path, trusted_targets)
    model = build_checked(without_weight_sources(model_cfg))
    if not isinstance(model, nn.Module):
        raise UntrustedCheckpointError(
            f"checkpoint {path}: model._target_={model_cfg['_target_']!r} built a {type(model).__name__}, not an nn.Module"
        )
    try:
        model.load_state_dict(model_state_dict(checkpoint))
    except RuntimeError as err:
        raise UserError(f"checkpoint {path} does not match its model config: {str(err).splitlines()[0]}") from None
    hparams = dict(checkpoint.get("hyper_parameters", {}))
    hparams.setdefault("num_classes", model_cfg.get("num_classes"))
    return model.eval(), hparams


@dataclass(frozen=True)
class InputConvention:
    """How a checkpoint's model saw its inputs: the normalisation and the batch padding multiple."""

    normalize: str
    pad_multiple: int


def stored_data(hparams: dict[str, Any]) -> dict[str, Any]:
    """The data section of the stored run config, as plain values (never instantiated)."""
    data = (hparams.get("config") or {}).get("data")
    return data if isinstance(data, dict) else {}


@functools.cache
def data_defaults() -> dict[str, Any]:
    """conf/data/common/loader.yaml: the values a stored data config without a key was trained with."""
    return yaml.safe_load((CONF_DIR / "data" / "common" / "loader.yaml").read_text())


def input_convention(hparams: dict[str, Any]) -> InputConvention:
    """The `data.normalize` and `data.pad_multiple` a checkpoint was trained with, as checked values."""
    from src.data.transforms import check_normalization

    data = {**data_defaults(), **stored_data(hparams)}
    normalize = check_normalization(str(data["normalize"]))
    multiple = data["pad_multiple"]
    if not isinstance(multiple, int) or isinstance(multiple, bool) or multiple < 1:
        raise UserError(f"the checkpoint's data.pad_multiple={multiple!r}: expected a positive integer")
    return InputConvention(normalize, multiple)
