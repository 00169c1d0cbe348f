"""Model size and cost: parameter count and forward GFLOPs at an input size."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameter elements (frozen ones included unless `trainable_only`)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


@torch.no_grad()
def gflops(
    model: nn.Module, input_size: tuple[int, int] = (512, 512), in_channels: int = 3
) -> float:
    """GFLOPs of one eval-mode forward pass on one image, a multiply-add counted as 2 FLOPs.

    Counted by torch's `FlopCounterMode`, which covers convolutions (transposed too) and matrix
    products; element-wise ops (BN, ReLU, additions, pooling) are left out, as in the literature.
    """
    parameter = next(model.parameters())
    x = torch.zeros(1, in_channels, *input_size, device=parameter.device, dtype=parameter.dtype)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(x)
    finally:
        model.train(was_training)
    return counter.get_total_flops() / 1e9


def complexity_summary(model: nn.Module, input_size: tuple[int, int]) -> dict[str, float]:
    """`{"params_M", "trainable_params_M", "gflops"}` for logging a run's model at its input size."""
    return {
        "params_M": count_parameters(model) / 1e6,
        "trainable_params_M": count_parameters(model, trainable_only=True) / 1e6,
        "gflops": gflops(model, input_size),
    }
