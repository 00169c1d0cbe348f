"""Bilinear-initialised transposed convolutions and the pad/crop alignment the VGG models share."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# VGG has five stride-2 poolings; every VGG-based model here works on inputs padded to this.
VGG_STRIDE = 32


def bilinear_kernel(in_channels: int, out_channels: int, kernel_size: int) -> torch.Tensor:
    """Weight `(in, out, k, k)` for `ConvTranspose2d` that upsamples each channel bilinearly.

    Channel `i` maps to channel `i` only (a diagonal mapping), as in the classic FCN
    `bilinear_kernel`; that one required `in == out`, here the diagonal covers `min(in, out)` channels and the rest is zero.
    """
    factor = (kernel_size + 1) // 2
    center = factor - 1 if kernel_size % 2 == 1 else factor - 0.5
    taps = 1 - (torch.arange(kernel_size, dtype=torch.float32) - center).abs() / factor
    weight = torch.zeros(in_channels, out_channels, kernel_size, kernel_size)
    diagonal = torch.arange(min(in_channels, out_channels))
    weight[diagonal, diagonal] = torch.outer(taps, taps)
    return weight


def bilinear_upsampling(
    in_channels: int, out_channels: int, factor: int, learnable: bool = True, bias: bool = False
) -> nn.ConvTranspose2d:
    """A `ConvTranspose2d` (bias-free by default) that upsamples by exactly `factor`, initialised as bilinear.

    Kernel `2f`, stride `f`, padding `f/2` gives an output of exactly `f * input` and, with
    `bilinear_kernel`, equals `F.interpolate(mode="bilinear", align_corners=False)` away from the
    borders (output pixel o samples input coordinate (o + 0.5) / f - 0.5), so no crop offsets are
    needed. A bias starts at zero. `learnable=False` freezes the layer (`requires_grad=False`).
    """
    if factor < 2 or factor % 2:
        raise ValueError(f"upsampling factor must be an even integer >= 2, got {factor}")
    layer = nn.ConvTranspose2d(
        in_channels, out_channels, 2 * factor, stride=factor, padding=factor // 2, bias=bias
    )
    with torch.no_grad():
        layer.weight.copy_(bilinear_kernel(in_channels, out_channels, 2 * factor))
    if layer.bias is not None:
        nn.init.zeros_(layer.bias)
    layer.requires_grad_(learnable)
    return layer


def pad_to_multiple(x: torch.Tensor, multiple: int = VGG_STRIDE) -> torch.Tensor:
    """Pad `x` (N,C,H,W) at the bottom and right so that H and W are multiples of `multiple`.

    Reflection where the image is large enough (always for H, W >= 32), zeros otherwise.
    """
    height, width = x.shape[-2:]
    pad_h, pad_w = -height % multiple, -width % multiple
    # No early return for pad 0: tracing/torch.export would freeze that branch for every input size.
    mode = "reflect" if pad_h < height and pad_w < width else "constant"
    return F.pad(x, (0, pad_w, 0, pad_h), mode=mode)
