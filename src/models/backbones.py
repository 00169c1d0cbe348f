"""VGG16 / VGG16-BN feature stages with a width multiplier, and backbone weight loading."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torchvision.models import VGG16_BN_Weights, VGG16_Weights

from src.utils.errors import UserError
from src.utils.files import load_tensor_file

log = logging.getLogger(__name__)


class ModelConfigError(UserError, ValueError):
    """A bad `model.*` value or weights file; the entry points print it without a traceback."""


class WeightsDownloadError(UserError, RuntimeError):
    """`weights=imagenet` could not be downloaded; the message says how to pass a local file."""


# VGG16's conv widths per stage (torchvision's configuration "D"); each stage ends in a 2x2 max-pool.
VGG16_STAGES = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))
VGG_NAMES = ("vgg16", "vgg16_bn")
_IMAGENET = {"vgg16": VGG16_Weights.IMAGENET1K_V1, "vgg16_bn": VGG16_BN_Weights.IMAGENET1K_V1}
# The classifier of torchvision's VGG: fc6 (Linear 25088->4096), fc7 (4096->4096), fc8 (->1000).
VGG_CLASSIFIER_KEYS = frozenset(
    f"classifier.{i}.{p}" for i in (0, 3, 6) for p in ("weight", "bias")
)


@dataclass(frozen=True)
class BackboneSpec:
    """What `model.backbone` holds: the network name, channel width multiplier and weights."""

    name: str = "vgg16_bn"
    width: float = 1.0
    weights: str | None = None

    @classmethod
    def parse(cls, cfg: Mapping[str, Any] | None, names: Iterable[str] = VGG_NAMES) -> BackboneSpec:
        """Build from a config mapping (DictConfig or dict), naming any bad key or value."""
        values = dict(cfg or {})
        unknown = sorted(set(values) - {"name", "width", "weights"})
        if unknown:
            raise ModelConfigError(
                f"model.backbone has unknown keys {unknown}; expected name, width, weights"
            )
        spec = cls(**values)
        names = tuple(names)
        if spec.name not in names:
            raise ModelConfigError(f"model.backbone.name={spec.name!r} is not one of {list(names)}")
        if not float(spec.width) > 0:
            raise ModelConfigError(f"model.backbone.width must be > 0, got {spec.width}")
        return spec


def scale_channels(channels: int, width: float) -> int:
    """A channel count under the width multiplier: `max(8, round(channels * width))`."""
    return max(8, round(channels * width))


class VGGFeatures(nn.Module):
    """VGG16's conv layers as torchvision builds them, returning the outputs of pool1..pool5.

    Layer indices match torchvision's `vgg16(_bn).features`, so its state dict keys
    (`features.N.weight`) load directly.
    """

    def __init__(self, batch_norm: bool = True, width: float = 1.0) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        self.stage_ends: list[int] = []
        self.stage_channels: list[int] = []
        in_channels = 3
        for stage in VGG16_STAGES:
            for channels in stage:
                out_channels = scale_channels(channels, width)
                layers.append(nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1))
                if batch_norm:
                    layers.append(nn.BatchNorm2d(out_channels))
                layers.append(nn.ReLU(inplace=True))
                in_channels = out_channels
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            self.stage_ends.append(len(layers))
            self.stage_channels.append(in_channels)
        self.features = nn.Sequential(*layers)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """torchvision's VGG initialisation (Kaiming fan-out for convs, identity BN)."""
        for module in self.features:
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Feature maps after each pooling: strides 2, 4, 8, 16, 32."""
        outputs = []
        for index, layer in enumerate(self.features, start=1):
            x = layer(x)
            if index in self.stage_ends:
                outputs.append(x)
        return outputs


def build_vgg(spec: BackboneSpec) -> VGGFeatures:
    """The VGG feature stages for `spec`, with `spec.weights` loaded into them."""
    backbone = VGGFeatures(batch_norm=spec.name == "vgg16_bn", width=spec.width)
    state = vgg_state_dict(spec)
    if state is not None:
        features = {k: v for k, v in state.items() if k.startswith("features.")}
        load_checked(backbone, features, source=str(spec.weights))
    return backbone


def vgg_state_dict(spec: BackboneSpec) -> dict[str, torch.Tensor] | None:
    """torchvision's full VGG state dict named by `spec.weights`, keys checked; None for null."""
    if spec.weights is None:
        return None
    if spec.weights != "imagenet":
        existing_file(spec.weights, "model.backbone.weights")  # a missing file is named first
    if spec.width != 1.0:
        raise ModelConfigError(
            f"model.backbone.weights={spec.weights!r} holds full-width {spec.name} tensors but "
            f"model.backbone.width={spec.width}; use width 1.0 or weights=null"
        )
    state = resolve_weights(spec.weights, lambda: _IMAGENET[spec.name], "model.backbone.weights")
    # Key names do not depend on the width: list them from the cheapest instance.
    expected = set(VGGFeatures(batch_norm=spec.name == "vgg16_bn", width=1e-3).state_dict())
    check_keys(state, expected, allowed=VGG_CLASSIFIER_KEYS, source=spec.weights)
    return state


def resolve_weights(weights: str, imagenet: Callable[[], Any], key: str) -> dict[str, torch.Tensor]:
    """The state dict for `weights`: `imagenet` (torchvision's enum, downloads once) or a path."""
    if weights == "imagenet":
        enum = imagenet()
        try:
            return enum.get_state_dict(progress=True)
        except Exception as error:  # URLError, HTTP, SSL, DNS...: all mean "could not download".
            raise WeightsDownloadError(
                f"{key}=imagenet: could not download {enum.url} ({error}). Offline, download "
                f"that file elsewhere and pass its path: {key}=/path/to/{Path(enum.url).name}"
            ) from None
    return read_state_dict(weights, key)


def existing_file(path: str | Path, key: str) -> Path:
    """`path` as a Path if it is a file, else a ModelConfigError naming `key` and the path."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise ModelConfigError(
            f"{key}={path}: no such file; expected null, imagenet or a path to a .pth state dict"
        )
    return file


def read_state_dict(path: str | Path, key: str) -> dict[str, torch.Tensor]:
    """Load a tensor-only state dict (or a checkpoint holding one under "state_dict") from disk."""
    file = existing_file(path, key)
    try:
        loaded = load_tensor_file(file, key)  # the one loader: weights_only, nothing in the file runs
    except UserError as error:
        raise ModelConfigError(f"{key}={path}: not a tensor-only state dict ({error})") from None
    if isinstance(loaded, Mapping) and isinstance(loaded.get("state_dict"), Mapping):
        loaded = loaded["state_dict"]
    if not isinstance(loaded, Mapping) or not all(
        isinstance(v, torch.Tensor) for v in loaded.values()
    ):
        raise ModelConfigError(f"{key}={path}: expected a mapping of parameter names to tensors")
    return dict(loaded)


def check_keys(
    state: Mapping[str, Any], expected: set[str], allowed: Iterable[str] = (), source: str = ""
) -> None:
    """Raise ValueError listing the keys of `state` that are missing or unexpected."""
    missing = sorted(expected - set(state))
    unexpected = sorted(set(state) - expected - set(allowed))
    if missing or unexpected:
        raise ModelConfigError(
            f"state dict {source} does not fit the model: missing keys {missing}, "
            f"unexpected keys {unexpected}"
        )


def load_checked(module: nn.Module, state: Mapping[str, torch.Tensor], source: str = "") -> None:
    """`load_state_dict` that reports every key and shape mismatch in one ValueError."""
    own = module.state_dict()
    check_keys(state, set(own), source=source)
    shapes = [
        f"{k}: file {tuple(v.shape)} vs model {tuple(own[k].shape)}"
        for k, v in state.items()
        if v.shape != own[k].shape
    ]
    if shapes:
        raise ModelConfigError(f"state dict {source} has tensors of the wrong shape: {shapes}")
    module.load_state_dict(state)


def copy_matching_tensors(module: nn.Module, path: str | Path, key: str = "model.init_from") -> int:
    """Copy every tensor of a checkpoint whose name and shape match `module`'s; return the count.

    Accepts a Lightning checkpoint (its "state_dict", keys prefixed "model.") or a bare state
    dict; this is the paper's staged training (FCN-32s -> FCN-16s -> FCN-8s), where the new
    skip scores keep their zero initialisation.
    """
    state = read_state_dict(path, key)
    own = module.state_dict()
    matched = {}
    for name, tensor in state.items():
        for prefix in ("model.", "_orig_mod."):  # LightningModule attribute, torch.compile wrapper
            name = name.removeprefix(prefix)
        if name in own and own[name].shape == tensor.shape:
            matched[name] = tensor
    if not matched:
        raise ModelConfigError(f"{key}={path}: no tensor matches this model by name and shape")
    module.load_state_dict(matched, strict=False)
    log.info("%s=%s: copied %d of %d tensors", key, path, len(matched), len(own))
    return len(matched)
