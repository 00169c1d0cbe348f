"""Checkpoints made by hand for inference tests: a model with varied, context-dependent predictions.

A few smoke steps of training predict background almost everywhere, so a test could not tell one
inference mode from another; random weights (score layers included) and trained-looking BatchNorm
statistics give every pixel its own argmax.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import hydra
import torch
from torch import nn


def randomized(model: nn.Module, seed: int = 0) -> nn.Module:
    """The model with random conv weights (zero-initialised score layers too) and non-trivial BN statistics."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Conv2d) and not module.weight.abs().sum():  # zero-init skips
                module.weight.normal_(0.0, 0.1, generator=generator)
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5, generator=generator)
                module.running_var.uniform_(0.5, 2.0, generator=generator)
    return model


def write_checkpoint(path: Path, model_cfg: dict[str, Any], data_cfg: dict[str, Any], seed: int = 0) -> Path:
    """A Lightning-shaped checkpoint (tensors under `model.`, the run config) of a randomised model."""
    torch.manual_seed(seed)
    model = randomized(hydra.utils.instantiate(model_cfg), seed)
    num_classes = int(model_cfg["num_classes"])
    torch.save(
        {
            "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
            "hyper_parameters": {"num_classes": num_classes, "config": {"model": model_cfg, "data": data_cfg}},
        },
        path,
    )
    return path
