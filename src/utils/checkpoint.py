"""Safe checkpoint loading: tensors and primitives only, the model rebuilt from the stored config.

A `.ckpt` is a pickle; unpickling can run any code the file carries. seglab checkpoints hold only
tensors and plain hyper-parameters (DESIGN.md), so they load with `torch.load(weights_only=True)`,
whose restricted unpickler rejects every other global before anything is called. A file that
needs more is refused with a UserError naming it; its payload never runs.
"""

from __future__ import annotations

import pickle
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hydra
import torch
from torch import nn

from src.utils.errors import UserError


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """torch.load(weights_only=True) of a seglab/Lightning checkpoint; unsafe or unreadable files raise UserError."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(
            f"ckpt_path={path} does not exist; expected a Lightning .ckpt file (e.g. <run>/checkpoints/last.ckpt)"
        )
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(err))
        what = f" (it references {found.group(1)})" if found else ""
        raise UserError(
            f"checkpoint {path} needs arbitrary unpickling{what} and was refused: seglab loads checkpoints with "
            "torch.load(weights_only=True), so only tensors and primitive values are accepted and no code in "
            "the file runs. Re-save it from a trusted environment with tensors and plain hyper-parameters only."
        ) from None
    except Exception as err:  # truncated or foreign bytes fail anywhere inside torch's unpickler
        detail = str(err).splitlines()[0] if str(err) else ""
        raise UserError(
            f"checkpoint {path} cannot be read ({type(err).__name__}: {detail}); expected a Lightning .ckpt file"
        ) from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise UserError(
            f"checkpoint {path} has no 'state_dict'; expected a Lightning checkpoint written by src/train.py"
        )
    return checkpoint


def checkpoint_config(checkpoint: dict[str, Any], path: str | Path) -> dict[str, Any]:
    """The resolved run config stored in the checkpoint's hyper-parameters."""
    config = checkpoint.get("hyper_parameters", {}).get("config")
    if not isinstance(config, dict) or "model" not in config:
        raise UserError(
            f"checkpoint {path} stores no run config (hyper_parameters.config.model); expected one written by src/train.py"
        )
    return config


# Runtime switches that model configs held before they moved to conf/module/ (older checkpoints).
LEGACY_MODEL_KEYS = ("channels_last", "compile", "aux_weight")


def _offline_model_config(model_cfg: dict[str, Any]) -> dict[str, Any]:
    """The model config with pretrained-weight sources removed: the checkpoint's tensors replace them anyway."""
    model_cfg = {k: v for k, v in model_cfg.items() if k not in LEGACY_MODEL_KEYS}
    if "init_from" in model_cfg:
        model_cfg["init_from"] = None
    if isinstance(model_cfg.get("backbone"), dict) and "weights" in model_cfg["backbone"]:
        model_cfg["backbone"] = {**model_cfg["backbone"], "weights": None}
    if "weights" in model_cfg:
        model_cfg["weights"] = None
    return model_cfg


def model_state_dict(checkpoint: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The model's tensors: the Lightning module's `model.` entries with the prefix removed."""
    prefix = "model."
    return {
        key[len(prefix) :]: value
        for key, value in checkpoint["state_dict"].items()
        if key.startswith(prefix)
    }


def model_from_checkpoint(
    path: str | Path, map_location: str | torch.device = "cpu"
) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the trained model (in eval mode) and return it with the checkpoint's hyper-parameters."""
    checkpoint = load_checkpoint(path, map_location)
    config = checkpoint_config(checkpoint, path)
    model = hydra.utils.instantiate(_offline_model_config(config["model"]))
    try:
        model.load_state_dict(model_state_dict(checkpoint))
    except RuntimeError as err:
        raise UserError(
            f"checkpoint {path} does not match its model config: {str(err).splitlines()[0]}"
        ) from None
    hparams = dict(checkpoint.get("hyper_parameters", {}))
    hparams.setdefault("num_classes", config["model"].get("num_classes"))
    return model.eval(), hparams


@dataclass(frozen=True)
class InputConvention:
    """How a checkpoint's model saw its inputs: the normalisation and the batch padding multiple."""

    normalize: str = "imagenet"  # checkpoints written before data.normalize existed used ImageNet's
    pad_multiple: int = 32


def input_convention(hparams: dict[str, Any]) -> InputConvention:
    """The `data.normalize` and `data.pad_multiple` a checkpoint was trained with."""
    data = (hparams.get("config") or {}).get("data") or {}
    default = InputConvention()
    return InputConvention(
        str(data.get("normalize", default.normalize)),
        int(data.get("pad_multiple", default.pad_multiple)),
    )
