"""Model set-up for tests: presets as the command line composes them, and weights that make outputs differ.

Untrained FCNs score every pixel 0 (zero score layers), so tests that compare outputs randomise them.
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf
from torch import nn

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"


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


@functools.cache
def composed_model(preset: str) -> dict:
    """`model=<preset>` as `python src/train.py` composes it (defaults list included), unresolved."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        # ~sizing: the default run's CPU size (conf/sizing/) would apply to fcn8s
        cfg = compose(config_name="train", overrides=[f"model={preset}", "~sizing"])
    GlobalHydra.instance().clear()
    return OmegaConf.to_container(cfg.model)
