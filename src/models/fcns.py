"""pochih/FCN-pytorch's `FCNs` with its defects fixed."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from .backbones import BackboneSpec, build_vgg, copy_matching_tensors, scale_channels
from .contract import SegmentationModel
from .upsample import bilinear_upsampling, pad_to_multiple


class FCNs(SegmentationModel):
    """Five 2x stages `BN(ReLU(deconv(x)))` adding pool4..pool1 features, then a 1x1 classifier.

    Fixed from pochih's version: the deconvolutions are 4x4 / stride 2 / padding 1 initialised
    as bilinear upsampling (the original 3x3 with output_padding=1 cannot be, and starts from
    random weights); the skip taps are found at the pooling layers, so `vgg16_bn` works (the
    original hard-codes layer ranges of plain `vgg16`, which cut `vgg16_bn` mid-stage).
    `learnable_upsampling=false` freezes the five deconvolutions. The deconvolutions and the
    classifier are declared head layers (narrow at small widths; src/models/precision.py).
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
        spec = BackboneSpec.parse(backbone)
        self.backbone = build_vgg(spec)
        c1, c2, c3, c4, c5 = self.backbone.stage_channels
        widths = [(c5, c4), (c4, c3), (c3, c2), (c2, c1), (c1, scale_channels(32, spec.width))]
        self.deconvs = nn.ModuleList(
            bilinear_upsampling(cin, cout, 2, learnable_upsampling, bias=True)
            for cin, cout in widths
        )
        self.bns = nn.ModuleList(nn.BatchNorm2d(cout) for _, cout in widths)
        self.relu = nn.ReLU(inplace=True)
        self.classifier = nn.Conv2d(widths[-1][1], num_classes, kernel_size=1)
        self.declare_head(*self.deconvs, self.classifier)
        if init_from is not None:
            copy_matching_tensors(self, init_from, key="model.init_from")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (N, num_classes, H, W) for images (N, 3, H, W); see fcn.py on the padding."""
        x1, x2, x3, x4, x5 = self.backbone(pad_to_multiple(x))
        score = x5
        for deconv, bn, skip in zip(self.deconvs, self.bns, (x4, x3, x2, x1, None), strict=True):
            score = bn(self.relu(deconv(score)))
            if skip is not None:
                score = score + skip
        return self.classifier(score)[..., : x.shape[-2], : x.shape[-1]]
