"""Encoder weights for the smp models (src/models/smp.py): local files, Hub downloads, key checks.

`model.encoder_weights` is null, a name smp lists for the encoder (`imagenet`; for `tu-` encoders,
timm's weights of the name's tag), downloaded once from the Hugging Face Hub into its cache, or a
local file holding the encoder's state dict: `.safetensors` (read with safetensors) or
`.pth`/`.pt`/`.bin` (torch.load with weights_only=True). A file is checked against the encoder's
keys and shapes, and a mismatch is named by key; offline, a download fails with the file's
address and the key to pass it with. Nothing here is imported before an smp model is built.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch
from torch import nn

from .backbones import ModelConfigError, WeightsDownloadError, read_state_dict

log = logging.getLogger(__name__)

WEIGHTS_KEY = "model.encoder_weights"


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
