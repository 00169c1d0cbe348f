"""torchvision's FCN-ResNet and DeepLabV3-ResNet behind seglab's model contract."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torchvision.models import ResNet50_Weights, ResNet101_Weights
from torchvision.models import segmentation as tvseg

from .backbones import (
    BackboneSpec,
    ModelConfigError,
    copy_matching_tensors,
    load_checked,
    resolve_weights,
)
from .contract import SegmentationModel

_BUILDERS = {
    ("fcn", "resnet50"): tvseg.fcn_resnet50,
    ("fcn", "resnet101"): tvseg.fcn_resnet101,
    ("deeplabv3", "resnet50"): tvseg.deeplabv3_resnet50,
    ("deeplabv3", "resnet101"): tvseg.deeplabv3_resnet101,
}
_IMAGENET = {
    "resnet50": ResNet50_Weights.IMAGENET1K_V1,
    "resnet101": ResNet101_Weights.IMAGENET1K_V1,
}
RESNET_NAMES = ("resnet50", "resnet101")


class TorchvisionSegmentation(SegmentationModel):
    """A torchvision segmentation model (output stride 8) returning logits at the input size.

    With `aux_loss`, training mode returns `{"out": logits, "aux": aux_logits}` (as torchvision
    does) and the training loss adds `module.aux_weight` times the aux term; eval mode returns the
    logits tensor and skips the aux head. DeepLabV3's image pooling branch has a BatchNorm over
    one value per channel, so it needs a batch of at least 2 in training mode.
    """

    weight_keys = ("backbone.weights", "init_from")

    def __init__(
        self,
        head: str,
        num_classes: int,
        backbone: Mapping[str, Any] | None = None,
        aux_loss: bool = True,
        init_from: str | None = None,
    ) -> None:
        super().__init__()
        spec = BackboneSpec.parse(backbone or {"name": "resnet50"}, names=RESNET_NAMES)
        if spec.width != 1.0:
            raise ModelConfigError(
                f"model.backbone.width={spec.width}: torchvision models have width 1.0"
            )
        if (head, spec.name) not in _BUILDERS:
            raise ModelConfigError(f"model.head={head!r} is not one of ['fcn', 'deeplabv3']")
        build = _BUILDERS[head, spec.name]
        self.net = build(
            weights=None, weights_backbone=None, num_classes=num_classes, aux_loss=aux_loss
        )
        self.declare_head(
            self.net.classifier[-1], *([self.net.aux_classifier[-1]] if aux_loss else [])
        )
        if spec.weights is not None:
            self.load_backbone(spec)
        if init_from is not None:
            copy_matching_tensors(self, init_from, key="model.init_from")

    def load_backbone(self, spec: BackboneSpec) -> None:
        """Load a torchvision ResNet state dict (ImageNet or a file) into the backbone."""
        state = resolve_weights(
            spec.weights, lambda: _IMAGENET[spec.name], "model.backbone.weights"
        )
        # torchvision keeps the ResNet's layers up to layer4; its classifier `fc` is dropped.
        state = {k: v for k, v in state.items() if k not in ("fc.weight", "fc.bias")}
        load_checked(self.net.backbone, state, source=str(spec.weights))

    def forward(self, x: torch.Tensor) -> torch.Tensor | dict[str, torch.Tensor]:
        """Logits (N, C, H, W), or {"out", "aux"} in training mode when the aux head is on."""
        size = x.shape[-2:]
        features = self.net.backbone(x)
        out = self.upsample(self.net.classifier(features["out"]), size)
        if not self.training or self.net.aux_classifier is None:
            return self.outputs(out)
        return self.outputs(out, self.upsample(self.net.aux_classifier(features["aux"]), size))

    @staticmethod
    def upsample(logits: torch.Tensor, size: torch.Size) -> torch.Tensor:
        """Bilinear resize to the input size, as torchvision's models do."""
        return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)

