"""Narrow layers run in fp32 under CPU bf16 autocast: oneDNN's AMX path gets them wrong.

Measured on an Intel CPU with AMX-BF16 (torch 2.14.1, oneDNN 3.12; tests/test_cpu_bf16.py): under
`torch.autocast("cpu", dtype=torch.bfloat16)` the input gradient of a ConvTranspose2d with fewer
than 16 channels is wrong (relative error 0.8-0.96 at 6 channels; 0.003 at 16 or 21), and the
backward of a 1x1 convolution with >= 3072 inputs and < 16 outputs corrupts the heap. FCN's score
and upsampling layers are num_classes wide, so every task with fewer than 16 classes hit one or
both. Running exactly those layers in fp32 with autocast off avoids both and keeps AMX for the
backbone, where the time goes: the num_classes-wide head is 0.6% of FCN-8s's multiply-adds at
width 0.25 and 0.05% at width 1.0. CPUs without bf16 in oneDNN (AVX2 only) never take that path
and are unaffected; GPUs are unaffected.

A model declares its head layers once (`SegmentationModel.declare_head`); each declared layer
then guards itself, so no call site has to remember it.
"""

from __future__ import annotations

import functools

import torch
from torch import nn

# oneDNN's AMX kernels computed layers this narrow wrongly (on either side of the layer)
NARROW_CHANNELS = 16


def is_narrow(layer: nn.Module) -> bool:
    """A convolution with fewer than NARROW_CHANNELS input or output channels."""
    channels = (getattr(layer, "in_channels", NARROW_CHANNELS), getattr(layer, "out_channels", NARROW_CHANNELS))
    return min(channels) < NARROW_CHANNELS


def run_narrow_in_fp32(layer: nn.Module, x: torch.Tensor, forward=None) -> torch.Tensor:
    """`layer(x)`, in fp32 with autocast off when it is narrow and CPU bf16 autocast is on.

    The output is then fp32; the layers after it (additions, the loss) accept either dtype.
    """
    forward = forward or layer
    if x.device.type != "cpu" or not torch.is_autocast_enabled("cpu") or not is_narrow(layer):
        return forward(x)
    with torch.autocast("cpu", enabled=False):
        return forward(x.float())


class _HeadLayer:
    """Mixin put in front of a declared layer's class: its forward guards itself."""

    is_head_layer = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return run_narrow_in_fp32(self, x, super().forward)


@functools.cache
def _head_class(cls: type[nn.Module]) -> type[nn.Module]:
    # One class per layer type, so instances stay comparable, copyable and compilable; the state
    # dict is untouched (the layer keeps its attributes and parameter names).
    return type(cls.__name__, (_HeadLayer, cls), {"__module__": cls.__module__, "__qualname__": cls.__qualname__})


def keep_fp32_under_cpu_autocast(layer: nn.Module) -> nn.Module:
    """Make `layer` run in fp32 with autocast off whenever CPU bf16 autocast would break it; returns it."""
    if not getattr(layer, "is_head_layer", False):
        layer.__class__ = _head_class(type(layer))
    return layer
