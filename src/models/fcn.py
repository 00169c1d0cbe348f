"""FCN-32s, FCN-16s and FCN-8s on VGG16 as Long et al. (CVPR 2015) built them.

Alignment. The paper pads the input by 100 pixels so that fc6 (a 7x7 convolution without padding)
has an output on small images, then crops every upsampled score map at the offset (19, 9, 31...)
that lines it up with the input. Here fc6 has padding 3 like every other convolution, and the
input is padded at the bottom/right to a multiple of 32. Then every pooling halves the size
exactly, the pixel k of a stride-s map covers input pixels [k*s, (k+1)*s), and the transposed
convolutions of `bilinear_upsampling` (kernel 2f, stride f, padding f/2) sample at exactly those
centres, so all crop offsets are zero and only the padding is cut off at the end. Same alignment,
without the ~6x compute the 200 extra pixels cost on 128-pixel training crops.

Initialisation. Every class scoring layer starts at zero, `score_fr` included: the paper
"initialize[s] the class scoring convolution layer to zero, finding random initialization to yield
neither better performance nor faster convergence" (CVPR 2015, sec. 4.3, Optimization), and the
Caffe reference (Caffe's default constant-0 filler) and wkentaro/pytorch-fcn do the same. The first
update moves only the scoring layers (their gradient is the features times the error); the layers
below them receive gradient from the second step on.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from .backbones import (
    BackboneSpec,
    ModelConfigError,
    VGGFeatures,
    copy_matching_tensors,
    load_checked,
    scale_channels,
    vgg_state_dict,
)
from .contract import SegmentationModel
from .upsample import bilinear_upsampling, pad_to_multiple


def score_layer(in_channels: int, num_classes: int) -> nn.Conv2d:
    """A zero-initialised 1x1 scoring conv: a new skip starts by leaving the coarser net unchanged."""
    layer = nn.Conv2d(in_channels, num_classes, kernel_size=1)
    nn.init.zeros_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


def skip_scale_pair(values: Sequence[float]) -> tuple[float, float]:
    """`model.skip_scales` as (pool4, pool3) factors: two positive numbers."""
    scales = tuple(float(v) for v in values)
    if len(scales) != 2 or not all(v > 0 for v in scales):
        raise ModelConfigError(
            f"model.skip_scales={list(values)}: expected two positive factors [pool4, pool3], e.g. "
            "[1, 1] or the at-once recipe's [0.01, 0.0001]"
        )
    return scales[0], scales[1]


class VGGFCN(SegmentationModel):
    """The part FCN-32s/16s/8s share: VGG16 conv stages, fc6/fc7 as convolutions, `score_fr`.

    `learnable_upsampling` governs the 2x upsamplings of 16s/8s; the final upsampling (32x, 16x
    or 8x) is always fixed bilinear interpolation, as in the paper. `init_from` copies every
    tensor whose name and shape match from a checkpoint (FCN-32s -> 16s -> 8s staged training).
    The num_classes-wide head (score and upsampling layers) is declared with `declare_head`: in
    fp32 under CPU bf16 autocast, where oneDNN's AMX kernels compute such narrow layers wrongly
    (src/models/precision.py); otherwise the plain layer.
    """

    weight_keys = ("backbone.weights", "init_from")

    def __init__(
        self,
        num_classes: int,
        backbone: Mapping[str, Any] | None = None,
        learnable_upsampling: bool = True,
        init_from: str | None = None,
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        spec = BackboneSpec.parse(backbone)
        self.backbone = VGGFeatures(batch_norm=spec.name == "vgg16_bn", width=spec.width)
        hidden = scale_channels(4096, spec.width)
        self.fc6 = nn.Conv2d(self.backbone.stage_channels[4], hidden, kernel_size=7, padding=3)
        self.fc7 = nn.Conv2d(hidden, hidden, kernel_size=1)
        self.relu = nn.ReLU(inplace=True)
        self.drop = nn.Dropout(dropout)
        self.score_fr = score_layer(hidden, num_classes)
        self.build_upsampling(num_classes, learnable_upsampling)
        self.declare_head(*(m for n, m in self.named_children() if n.startswith(("score", "upscore"))))
        state = vgg_state_dict(spec)
        if state is not None:
            self.load_vgg(state, str(spec.weights))
        if init_from is not None:
            copy_matching_tensors(self, init_from, key="model.init_from")

    def build_upsampling(self, num_classes: int, learnable: bool) -> None:
        """Create the skip scores and upsampling layers of this variant."""
        raise NotImplementedError

    def load_vgg(self, state: Mapping[str, torch.Tensor], source: str) -> None:
        """Load torchvision VGG weights: the conv stages, and fc6/fc7 when the file has them."""
        features = {k: v for k, v in state.items() if k.startswith("features.")}
        load_checked(self.backbone, features, source=source)
        for name, index in (("fc6", 0), ("fc7", 3)):
            if f"classifier.{index}.weight" not in state:
                continue
            layer = getattr(self, name)
            # A Linear over the flattened (C, 7, 7) pool5 map is a 7x7 convolution (paper, sec. 3.1).
            weight = state[f"classifier.{index}.weight"].reshape(layer.weight.shape)
            load_checked(layer, {"weight": weight, "bias": state[f"classifier.{index}.bias"]})

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """pool3, pool4 and the stride-32 class scores of `x` padded to a multiple of 32."""
        _, _, pool3, pool4, pool5 = self.backbone(pad_to_multiple(x))
        return pool3, pool4, self.score_fr(self.fc7_features(pool5))

    def fc7_features(self, pool5: torch.Tensor) -> torch.Tensor:
        """fc7's activations (after ReLU, then dropout) on pool5: VGG16's classifier run as convolutions."""
        hidden = self.drop(self.relu(self.fc6(pool5)))
        return self.drop(self.relu(self.fc7(hidden)))


class FCN32s(VGGFCN):
    """FCN-32s: stride-32 scores upsampled 32x."""

    def build_upsampling(self, num_classes: int, learnable: bool) -> None:
        """Only the fixed final 32x upsampling."""
        self.upscore = bilinear_upsampling(num_classes, num_classes, 32, learnable=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (N, num_classes, H, W) for images (N, 3, H, W)."""
        _, _, score = self.encode(x)
        return self.upscore(score)[..., : x.shape[-2], : x.shape[-1]]


class FCN16s(VGGFCN):
    """FCN-16s: 2x-upsampled stride-32 scores plus pool4 scores, upsampled 16x."""

    def build_upsampling(self, num_classes: int, learnable: bool) -> None:
        """pool4 scoring, a 2x upsampling and the fixed final 16x."""
        self.score_pool4 = score_layer(self.backbone.stage_channels[3], num_classes)
        self.upscore2 = bilinear_upsampling(num_classes, num_classes, 2, learnable)
        self.upscore16 = bilinear_upsampling(num_classes, num_classes, 16, learnable=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (N, num_classes, H, W) for images (N, 3, H, W)."""
        _, pool4, score = self.encode(x)
        score = self.upscore2(score) + self.score_pool4(pool4)
        return self.upscore16(score)[..., : x.shape[-2], : x.shape[-1]]


class FCN8s(VGGFCN):
    """FCN-8s: FCN-16s's fused scores upsampled 2x plus pool3 scores, upsampled 8x.

    `skip_scales` multiplies pool4 and pool3 by fixed factors (no gradient) before their scoring
    layers. `[0.01, 0.0001]` is the "at-once" FCN-8s trained straight from VGG16: it mirrors the
    fixed Scale layers `scale_pool4`/`scale_pool3` (lr_mult 0) of fcn.berkeleyvision.org's
    voc-fcn8s-atonce/net.py ("scaling the skip connections to better condition optimization",
    its README): pool4/pool3 activations are far larger than the fc7 path's scores, which start at
    zero. `[1, 1]` is the staged FCN-8s (trained from an FCN-16s).
    """

    def __init__(
        self,
        num_classes: int,
        backbone: Mapping[str, Any] | None = None,
        learnable_upsampling: bool = True,
        init_from: str | None = None,
        dropout: float = 0.5,
        skip_scales: Sequence[float] = (1.0, 1.0),
    ) -> None:
        super().__init__(num_classes, backbone, learnable_upsampling, init_from, dropout)
        self.skip_scales = skip_scale_pair(skip_scales)

    def build_upsampling(self, num_classes: int, learnable: bool) -> None:
        """pool4 and pool3 scoring, two 2x upsamplings and the fixed final 8x."""
        self.score_pool4 = score_layer(self.backbone.stage_channels[3], num_classes)
        self.score_pool3 = score_layer(self.backbone.stage_channels[2], num_classes)
        self.upscore2 = bilinear_upsampling(num_classes, num_classes, 2, learnable)
        self.upscore_pool4 = bilinear_upsampling(num_classes, num_classes, 2, learnable)
        self.upscore8 = bilinear_upsampling(num_classes, num_classes, 8, learnable=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (N, num_classes, H, W) for images (N, 3, H, W)."""
        pool3, pool4, score = self.encode(x)
        pool4_scale, pool3_scale = self.skip_scales
        score = self.upscore2(score) + self.score_pool4(pool4 * pool4_scale)
        score = self.upscore_pool4(score) + self.score_pool3(pool3 * pool3_scale)
        return self.upscore8(score)[..., : x.shape[-2], : x.shape[-1]]
