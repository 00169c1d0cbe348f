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

from tests.helpers.models import randomize_batchnorm_statistics, randomize_score_layers


def write_checkpoint(path: Path, model_cfg: dict[str, Any], data_cfg: dict[str, Any], seed: int = 0) -> Path:
    """A Lightning-shaped checkpoint (tensors under `model.`, the run config) of a randomised model."""
    torch.manual_seed(seed)
    model = randomize_score_layers(hydra.utils.instantiate(model_cfg), seed, std=0.1)
    randomize_batchnorm_statistics(model, seed)
    num_classes = int(model_cfg["num_classes"])
    torch.save(
        {
            "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
            "hyper_parameters": {"num_classes": num_classes, "config": {"model": model_cfg, "data": data_cfg}},
        },
        path,
    )
    return path
