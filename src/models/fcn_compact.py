"""A compact FCN-8s on vgg16_bn features: stages fused by 1x1 convolutions, no fc6/fc7."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from .backbones import BackboneSpec, build_vgg, copy_matching_tensors
from .contract import SegmentationModel
from .upsample import bilinear_upsampling, pad_to_multiple


class FCN8sCompact(SegmentationModel):
    """pool5 features upsampled 2x + pool4, 1x1 conv, upsampled 2x + pool3, 1x1 conv, 8x.

    Unlike the paper's FCN-8s it fuses feature maps (not class scores) and has no fc6/fc7, so it
    is about a tenth of the size. The unused `scores1..3` layers of the design it comes from are
    left out.
    `learnable_upsampling` governs the two 2x upsamplings; the final 8x is fixed bilinear.
    The fusion layers after pool5 are declared head layers: num_classes wide, or narrow at tiny
    widths, they run in fp32 under CPU bf16 autocast (src/models/precision.py).
    """

    weight_keys = ("backbone.weights", "init_from")

    def __init__(
        self,
        num_classes: int,
        backbone: Mapping[str, Any] | None = None,
        learnable_upsampling: bool = True,
        init_from: str | None = None,
    ) -> None:
        super().__init__()
        self.backbone = build_vgg(BackboneSpec.parse(backbone))
        _, _, c3, c4, c5 = self.backbone.stage_channels
        self.upsample_2x_1 = bilinear_upsampling(c5, c5, 2, learnable_upsampling)
        self.conv_trans1 = nn.Conv2d(c4, c3, kernel_size=1)
        self.upsample_2x_2 = bilinear_upsampling(c3, c3, 2, learnable_upsampling)
        self.conv_trans2 = nn.Conv2d(c3, num_classes, kernel_size=1)
        self.upsample_8x = bilinear_upsampling(num_classes, num_classes, 8, learnable=False)
        self.declare_head(
            self.upsample_2x_1, self.conv_trans1, self.upsample_2x_2, self.conv_trans2, self.upsample_8x
        )
        if init_from is not None:
            copy_matching_tensors(self, init_from, key="model.init_from")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (N, num_classes, H, W) for images (N, 3, H, W); see fcn.py on the padding."""
        _, _, s3, s4, s5 = self.backbone(pad_to_multiple(x))
        fused = self.conv_trans1(self.upsample_2x_1(s5) + s4)
        scores = self.conv_trans2(self.upsample_2x_2(fused) + s3)
        return self.upsample_8x(scores)[..., : x.shape[-2], : x.shape[-1]]
