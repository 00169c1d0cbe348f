"""Architectures from segmentation_models_pytorch (smp) behind seglab's model contract.

`model=smp model.arch=FPN model.encoder=resnet50` is `smp.create_model("FPN", "resnet50", ...)`:
any of smp's architectures over any of its encoders, or over any timm model as `tu-<name>`.
smp itself needs H and W divisible by the encoder's output stride (32, or 16/8 when dilated)
and raises otherwise; here the input is padded at the bottom and right to that multiple (the
reflection padding the FCNs use, src/models/upsample.py) and the logits are cropped back, so any
H, W >= 32 gives logits at the input size. Two architectures need more: DPT's decoder works at
twice the ViT's patch stride, and PAN's pyramid attention pools its last feature map three more
times, so its input is also padded up to 8 output strides.

Encoder weights (`model.encoder_weights`: null, `imagenet` or a file) load through
src/models/smp_weights.py. smp, timm, huggingface_hub and safetensors are seglab's `smp` extra:
they are imported only when a model is built, and a missing one names the extra to install.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from types import ModuleType
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from src.utils.errors import UserError

from .backbones import ModelConfigError, copy_matching_tensors
from .contract import SegmentationModel
from .smp_weights import load_smp_encoder, timm_encoder_state
from .upsample import pad_to_multiple

# smp's arguments that seglab sets itself: 3-channel images in, num_classes logits out, no
# activation (the losses take logits) and no classification head (forward returns logits only)
FIXED_ARGUMENTS = (
    "encoder_name",
    "encoder_weights",
    "in_channels",
    "classes",
    "activation",
    "aux_params",
)
# PAN's feature pyramid attention max-pools the last feature map 3 times: it needs 2**3 cells
MIN_CELLS = {"pan": 8}
# timm's test ResNet (0.5M parameters, strides 2..32): what smp's own tests train
TINY_ENCODER = "tu-test_resnet"
# DPT's decoder resamples the ViT's patch grid (the encoder's output stride) to twice its stride
STRIDE_FACTOR = {"dpt": 2}


class MissingExtraError(UserError, ModuleNotFoundError):
    """The `smp` extra is not installed; the message says how to install it."""


def import_smp() -> ModuleType:
    """`segmentation_models_pytorch`, or a MissingExtraError naming seglab's extra."""
    # smp itself, or timm / huggingface_hub / safetensors that it imports
    try:
        import segmentation_models_pytorch
    except ModuleNotFoundError:
        raise MissingExtraError(
            "model needs seglab's 'smp' extra, which is not installed: pip install -e '.[smp]'"
        ) from None
    return segmentation_models_pytorch


class SMPModel(SegmentationModel):
    """An smp architecture (`arch`) over an smp or timm encoder, with logits at any input size.

    `arch_args` are the architecture's own keyword arguments (`decoder_channels`,
    `encoder_output_stride`, `encoder_depth`...; for `tu-` encoders also timm's). The model has
    no auxiliary output.
    """

    weight_keys = ("encoder_weights", "init_from")

    def __init__(
        self,
        arch: str,
        encoder: str,
        num_classes: int,
        encoder_weights: str | None = None,
        init_from: str | None = None,
        **arch_args: Any,
    ) -> None:
        super().__init__()
        smp = import_smp()
        arch_class = architecture(smp, arch)
        check_encoder(smp, encoder)
        check_arch_args(arch_class, encoder, arch_args)
        timm_weights = None
        if encoder_weights is not None and encoder.startswith("tu-"):
            timm_weights = timm_encoder_state(encoder, str(encoder_weights))
        self.net = create(arch_class, encoder, int(num_classes), timm_weights, arch_args)
        if encoder_weights is not None and timm_weights is None:
            load_smp_encoder(self.net.encoder, encoder, str(encoder_weights))
        stride, name = int(self.net.encoder.output_stride), arch_class.__name__.lower()
        self.size_multiple = STRIDE_FACTOR.get(name, 1) * stride
        self.min_side = MIN_CELLS.get(name, 1) * stride
        self.declare_head(*class_layers(self.net.segmentation_head, int(num_classes)))
        if init_from is not None:
            copy_matching_tensors(self, init_from, key="model.init_from")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (N, num_classes, H, W) for images (N, 3, H, W)."""
        height, width = x.shape[-2:]
        padded = pad_to_multiple(x, self.size_multiple)
        if self.min_side > self.size_multiple:  # PAN only: other models trace without it
            short_h, short_w = self.min_side - padded.shape[-2], self.min_side - padded.shape[-1]
            padded = F.pad(padded, (0, max(short_w, 0), 0, max(short_h, 0)))
        return self.outputs(self.net(padded)[..., :height, :width])


def architecture(smp: ModuleType, arch: str) -> type[nn.Module]:
    """smp's class for `arch`, matched without regard to case (`unet`, `Unet`)."""
    classes = smp.MODEL_ARCHITECTURES_MAPPING
    if str(arch).lower() not in classes:
        names = sorted(cls.__name__ for cls in classes.values())
        raise ModelConfigError(f"model.arch={arch!r} is not one of smp's architectures {names}")
    return classes[str(arch).lower()]


def check_encoder(smp: ModuleType, encoder: str) -> None:
    """Raise a ModelConfigError unless `encoder` is an smp encoder or `tu-<timm model>`."""
    if encoder.startswith("tu-"):
        import timm

        if not timm.is_model(encoder[3:]):
            raise ModelConfigError(
                f"model.encoder={encoder!r}: timm has no model {encoder[3:]!r} (timm.list_models() lists them)"
            )
    elif encoder not in smp.encoders.encoders:
        raise ModelConfigError(
            f"model.encoder={encoder!r} is neither one of smp's encoders (e.g. resnet34, "
            "efficientnet-b3, mit_b0; smp.encoders.get_encoder_names() lists them) nor tu-<timm model>"
        )


def check_arch_args(
    arch_class: type[nn.Module], encoder: str, arch_args: Mapping[str, Any]
) -> None:
    """Name a model.<key> the architecture does not take: smp would ignore it silently."""
    accepted = set(inspect.signature(arch_class).parameters) - {"kwargs", *FIXED_ARGUMENTS}
    if "backbone" in arch_args:  # what debug=smoke shrinks (model.backbone.width) on the VGG models
        raise ModelConfigError(
            f"model.backbone: smp models have none (model.encoder names theirs); with debug=smoke "
            f"add ~model.backbone, and model.encoder={TINY_ENCODER} for a tiny encoder"
        )
    unknown = sorted(set(arch_args) - accepted)
    if unknown and not encoder.startswith("tu-"):  # tu- encoders pass the rest on to timm
        raise ModelConfigError(
            f"model.{unknown[0]} is not an argument of smp's {arch_class.__name__}; "
            f"it takes {sorted(accepted)}"
        )


def create(
    arch_class: type[nn.Module],
    encoder: str,
    num_classes: int,
    timm_weights: dict[str, torch.Tensor] | None,
    arch_args: Mapping[str, Any],
) -> nn.Module:
    """The smp model; a tu- encoder gets `timm_weights` through timm's own loader."""
    arguments: dict[str, Any] = {**arch_args, "encoder_name": encoder, "encoder_weights": None}
    if timm_weights is not None:
        # timm maps the full model's keys onto its features-only layout (stem.0 -> stem_0, ...)
        arguments.update(encoder_weights=True, pretrained_cfg_overlay={"state_dict": timm_weights})
    try:
        return arch_class(in_channels=3, classes=num_classes, **arguments)
    except (ValueError, KeyError, TypeError) as err:  # a value smp or timm refuses
        raise ModelConfigError(
            f"model.arch={arch_class.__name__} model.encoder={encoder}: {err}"
        ) from None


def class_layers(head: nn.Module, num_classes: int) -> list[nn.Module]:
    """The convolutions of smp's segmentation head that produce the num_classes logits."""
    layers = [
        m for m in head.modules() if isinstance(m, nn.Conv2d) and m.out_channels == num_classes
    ]
    if not layers:
        raise ModelConfigError(
            f"smp's segmentation head has no {num_classes}-channel convolution: {head}"
        )
    return layers
