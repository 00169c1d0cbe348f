"""Model set-up for tests that compare outputs: untrained FCNs score every pixel 0 (zero score layers)."""

from __future__ import annotations

import torch
from torch import nn


def randomize_score_layers(model: nn.Module, seed: int = 0, std: float = 0.05) -> nn.Module:
    """Give the zero-initialised `score_*` layers random weights, so logits depend on the input."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, module in model.named_modules():
            if name.rsplit(".", 1)[-1].startswith("score_") and isinstance(module, nn.Conv2d):
                module.weight.copy_(torch.randn(module.weight.shape, generator=generator) * std)
    return model


def randomize_batchnorm_statistics(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial eval-mode BatchNorm statistics (fresh ones, mean 0 and var 1, hide the layer)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5, generator=generator)
                module.running_var.uniform_(0.5, 2.0, generator=generator)
    return model
