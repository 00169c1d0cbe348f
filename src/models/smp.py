"""Architectures from segmentation_models_pytorch (smp) behind seglab's model contract.

`model=smp model.arch=FPN model.encoder=resnet50` is `smp.create_model("FPN", "resnet50", ...)`:
any of smp's architectures over any of its encoders, or over any timm model as `tu-<name>`.
smp itself needs H and W divisible by the encoder's output stride (32, or 16/8 when dilated)
and raises otherwise; here the input is padded at the bottom and right to that multiple (the
reflection padding the FCNs use, src/models/upsample.py) and the logits are cropped back, so any
H, W >= 32 gives logits at the input size. Two architectures need more: DPT's decoder works at
twice the ViT's patch stride, and PAN's pyramid attention pools its last feature map three more
times, so its input is also padded up to 8 output strides.

Encoder weights (`model.encoder_weights`): null (random), a name smp lists for the encoder
(`imagenet`; for `tu-` encoders, timm's weights of the name's tag), downloaded once from the
Hugging Face Hub into its cache, or a local file holding the encoder's state dict: `.safetensors`
(read with safetensors) or `.pth`/`.pt`/`.bin` (torch.load with weights_only=True), key-checked
before anything is loaded. Offline, the download fails with the file's address and the key to
pass it with. smp, timm, huggingface_hub and safetensors are seglab's `smp` extra: they are
imported only when a model is built, and a missing one names the extra to install.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from src.utils.errors import UserError

from .backbones import (
    ModelConfigError,
    WeightsDownloadError,
    copy_matching_tensors,
    read_state_dict,
)
from .contract import SegmentationModel
from .upsample import pad_to_multiple

log = logging.getLogger(__name__)

WEIGHTS_KEY = "model.encoder_weights"
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


def read_weights_file(path: str, key: str = WEIGHTS_KEY) -> dict[str, torch.Tensor]:
    """A state dict from `.safetensors` (safetensors) or a torch file (weights_only=True)."""
    if Path(path).suffix != ".safetensors":
        return read_state_dict(path, key)
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not Path(path).expanduser().is_file():
        raise ModelConfigError(
            f"{key}={path}: no such file; expected null, imagenet or a weights file"
        )
    try:
        return load_file(Path(path).expanduser(), device="cpu")
    except (SafetensorError, OSError) as err:
        raise ModelConfigError(f"{key}={path}: not a safetensors file ({err})") from None


def download(repo_id: str, filename: str, revision: str | None, encoder: str, weights: str) -> Path:
    """A file of the Hugging Face Hub (cached after the first time), or WeightsDownloadError."""
    import huggingface_hub

    url = huggingface_hub.hf_hub_url(repo_id, filename, revision=revision)
    try:
        return Path(huggingface_hub.hf_hub_download(repo_id, filename, revision=revision))
    except Exception as err:  # offline, DNS, HTTP, proxy...: all mean the file cannot be had
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise WeightsDownloadError(
            f"{WEIGHTS_KEY}={weights}: could not download the weights of encoder {encoder} "
            f"({reason}). Offline, download {url} elsewhere and pass its path: "
            f"{WEIGHTS_KEY}=/path/to/{filename}"
        ) from None


def load_smp_encoder(encoder_module: nn.Module, encoder: str, weights: str) -> None:
    """Load smp's named weights (downloaded) or a file into one of smp's own encoders."""
    from segmentation_models_pytorch.encoders import encoders as registry

    settings = registry[encoder]["pretrained_settings"]
    if weights in settings:
        repo, revision = settings[weights]["repo_id"], settings[weights]["revision"]
        path = download(repo, "model.safetensors", revision, encoder, weights)
        state = read_weights_file(str(path))
    elif Path(weights).suffix or "/" in weights or Path(weights).expanduser().exists():
        state = read_weights_file(weights)
    else:
        raise ModelConfigError(
            f"{WEIGHTS_KEY}={weights!r}: encoder {encoder} has weights {sorted(settings)}; "
            "or pass the path of a .pth / .safetensors file"
        )
    # The encoder's own loader drops its ImageNet classifier and renames old key layouts (in place),
    # then loads strictly; on a mismatch the keys it was left with are named.
    remapped = dict(state)
    try:
        encoder_module.load_state_dict(remapped)
    except RuntimeError as err:
        check_fits(remapped, encoder_module.state_dict(), encoder, weights)
        raise ModelConfigError(f"{WEIGHTS_KEY}={weights}: {str(err).splitlines()[0]}") from None
    log.info(
        "%s=%s: loaded %d tensors into encoder %s", WEIGHTS_KEY, weights, len(remapped), encoder
    )


def timm_encoder_state(encoder: str, weights: str) -> dict[str, torch.Tensor]:
    """The full timm model's state dict for a `tu-` encoder: timm's tag downloaded, or a file."""
    import timm

    name = encoder[3:]
    if weights == "imagenet":
        config = timm.models.get_pretrained_cfg(name)
        if config is None or not config.hf_hub_id:
            raise ModelConfigError(
                f"{WEIGHTS_KEY}=imagenet: timm has no downloadable weights for {name}; "
                "pick a tagged name (tu-<model>.<tag>) or pass a file"
            )
        filename = config.hf_hub_filename or "model.safetensors"
        state = read_weights_file(str(download(config.hf_hub_id, filename, None, encoder, weights)))
    else:
        state = read_weights_file(weights)
    try:
        with torch.device("meta"):  # only the key names and shapes are needed
            expected = timm.create_model(name).state_dict()
    except Exception:  # a model that cannot be built on the meta device: build it for real
        expected = timm.create_model(name).state_dict()
    classifier = timm.models.get_pretrained_cfg(name)
    optional = (
        [classifier.classifier] if classifier and isinstance(classifier.classifier, str) else []
    )
    check_fits(state, expected, encoder, weights, optional_layers=optional)
    log.info("%s=%s: %d tensors for encoder %s", WEIGHTS_KEY, weights, len(state), encoder)
    return state


def check_fits(
    state: Mapping[str, torch.Tensor],
    expected: Mapping[str, torch.Tensor],
    encoder: str,
    weights: str,
    optional_layers: Iterable[str] = (),
) -> None:
    """Raise a ModelConfigError listing missing, unexpected and misshapen keys of a weights file."""
    optional = tuple(f"{layer}." for layer in optional_layers)
    missing = [
        k
        for k in expected
        if k not in state and not k.endswith("num_batches_tracked") and not k.startswith(optional)
    ]
    unexpected = [k for k in state if k not in expected]
    misshapen = [
        f"{k} {tuple(state[k].shape)} vs {tuple(expected[k].shape)}"
        for k in state
        if k in expected and state[k].shape != expected[k].shape
    ]
    problems = [
        f"{label} ({len(keys)}): {', '.join(keys[:5])}{', ...' if len(keys) > 5 else ''}"
        for label, keys in (
            ("missing keys", missing),
            ("unexpected keys", unexpected),
            ("wrong shapes", misshapen),
        )
        if keys
    ]
    if problems:
        raise ModelConfigError(
            f"{WEIGHTS_KEY}={weights} does not fit encoder {encoder}: {'; '.join(problems)}"
        )
