"""The model contract, checked once for every preset (and for a model written the way docs/extending.md says).

Adding a model is a file in src/models/, a conf/model/<preset>.yaml and one line in PRESETS below.
Each model is built as `instantiate(cfg.model)` from the composed config, at the smallest width it
allows, and must: give logits (N, C, H, W) at any H, W >= 32 (97x131 here), return its auxiliary
output in training mode only, accept channels_last input with the same logits, keep its declared
head layers in fp32 under CPU bf16 autocast with finite logits, and export to ONNX with the same
logits as eager PyTorch at a second, different size (dynamic height and width).
"""

from __future__ import annotations

import functools
import importlib.util
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch import nn

from src.models.contract import SegmentationModel, main_logits
from src.models.precision import is_narrow
from tests.conftest import CONF_DIR, ROOT
from tests.helpers.models import composed_model

NUM_CLASSES = 3  # narrow (< 16 channels): the head layers take the fp32 path under CPU bf16
TINY_VGG = {"backbone.width": 1 / 16}
TINY_TIMM = "tu-test_resnet"  # timm's test ResNet (0.5M parameters), as smp's own tests use

# preset -> model.<key> overrides that make it small; has_aux: returns {"out", "aux"} in training;
# needs: the package of an optional extra (the preset's tests skip without it)
PRESETS: dict[str, dict[str, Any]] = {
    "fcn32s": {"overrides": TINY_VGG, "has_aux": False},
    "fcn16s": {"overrides": TINY_VGG, "has_aux": False},
    "fcn8s": {"overrides": TINY_VGG, "has_aux": False},
    "fcn8s_compact": {"overrides": TINY_VGG, "has_aux": False},
    "fcns": {"overrides": TINY_VGG, "has_aux": False},
    "tv_fcn_resnet50": {"overrides": {}, "has_aux": True},
    "tv_deeplabv3_resnet50": {"overrides": {}, "has_aux": True},
    # segmentation_models_pytorch (the smp extra): timm's tiny test ResNet for the preset's encoder
    "smp": {"overrides": {"encoder": TINY_TIMM, "decoder_channels": [16] * 5}, "has_aux": False, "needs": "segmentation_models_pytorch"},
    "unet_resnet34": {"overrides": {"encoder": TINY_TIMM, "decoder_channels": [32, 16, 16, 16, 16]}, "has_aux": False, "needs": "segmentation_models_pytorch"},
    "fpn_resnet50": {"overrides": {"encoder": TINY_TIMM, "decoder_pyramid_channels": 32, "decoder_segmentation_channels": 64}, "has_aux": False, "needs": "segmentation_models_pytorch"},
    "deeplabv3plus_resnet50": {"overrides": {"encoder": TINY_TIMM, "decoder_channels": 64}, "has_aux": False, "needs": "segmentation_models_pytorch"},
    "segformer_mit_b0": {"overrides": {"decoder_segmentation_channels": 32}, "has_aux": False, "needs": "segmentation_models_pytorch"},  # MiT-B0 itself
}


class TinyNet(SegmentationModel):
    """A model written by following docs/extending.md: two convs, a declared head and an aux output."""

    weight_keys = ("init_from",)

    def __init__(self, num_classes: int, channels: int = 8, init_from: str | None = None) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, channels, 3, stride=2, padding=1), nn.ReLU())
        self.classifier = nn.Conv2d(channels, num_classes, 1)
        self.aux_classifier = nn.Conv2d(channels, num_classes, 1)
        self.declare_head(self.classifier, self.aux_classifier)

    def forward(self, x: torch.Tensor) -> torch.Tensor | dict[str, torch.Tensor]:
        """Logits at the input size; aux logits too in training."""
        features = self.body(x)
        upsample = functools.partial(nn.functional.interpolate, size=x.shape[-2:], mode="bilinear")
        return self.outputs(upsample(self.classifier(features)), upsample(self.aux_classifier(features)))


THROWAWAY = {"_target_": f"{__name__}.TinyNet", "num_classes": NUM_CLASSES, "channels": 8, "init_from": None}


def model_config(preset: str) -> Any:
    """The preset's model config at NUM_CLASSES with its small-size overrides (the throwaway model as is)."""
    if preset == "throwaway":
        return OmegaConf.create(THROWAWAY)
    cfg = OmegaConf.create({"data": {"num_classes": NUM_CLASSES}, "model": composed_model(preset)})
    for key, value in PRESETS[preset]["overrides"].items():
        OmegaConf.update(cfg, f"model.{key}", value)
    return cfg.model


def build(preset: str) -> nn.Module:
    """`instantiate(cfg.model)` with every weight that starts at zero made random (so logits vary)."""
    if PRESETS.get(preset, {}).get("needs"):
        pytest.importorskip(PRESETS[preset]["needs"])
    torch.manual_seed(0)
    model = instantiate(model_config(preset))
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.dim() > 1 and not parameter.any():  # zero-initialised score layers
                parameter.normal_(std=0.05)
    return model


ALL = [*PRESETS, "throwaway"]
HAS_AUX = {**{name: spec["has_aux"] for name, spec in PRESETS.items()}, "throwaway": True}


def test_every_shipped_preset_is_in_the_table() -> None:
    shipped = {path.stem for path in (CONF_DIR / "model").glob("*.yaml")}
    assert shipped - set(PRESETS) == set(), "add the new preset to PRESETS"


@pytest.mark.parametrize("preset", ALL)
def test_is_a_segmentation_model_with_real_weight_keys_and_a_head(preset: str) -> None:
    model = build(preset)
    assert isinstance(model, SegmentationModel)  # instantiate(cfg.model) is the bare model
    config = OmegaConf.to_container(model_config(preset))
    assert not {"channels_last", "compile", "aux_weight"} & set(config)  # runtime switches: conf/module
    for dotted in type(model).weight_keys:  # each names a key of the model's own config
        assert OmegaConf.select(OmegaConf.create(config), dotted, default="absent") != "absent", dotted
    head = model.head_layers()
    assert head, "declare the num_classes-wide layers with declare_head"
    assert any(getattr(model.get_submodule(name), "out_channels", None) == NUM_CLASSES for name in head)


@pytest.mark.parametrize("preset", ALL)
def test_odd_sizes_aux_in_training_only_and_channels_last(preset: str) -> None:
    model = build(preset)
    x = torch.randn(1, 3, 97, 131)
    with torch.no_grad():
        logits = model.eval()(x)
        last = model(x.contiguous(memory_format=torch.channels_last))
        smallest = model(torch.randn(1, 3, 32, 32))  # the smallest size the contract promises
        trained = model.train()(torch.randn(2, 3, 33, 45))  # batch 2: DeepLabV3's pooling BatchNorm
    assert isinstance(logits, torch.Tensor) and logits.shape == (1, NUM_CLASSES, 97, 131)
    torch.testing.assert_close(last, logits, rtol=1e-4, atol=1e-4)
    assert smallest.shape == (1, NUM_CLASSES, 32, 32)
    if HAS_AUX[preset]:
        assert set(trained) == {"out", "aux"} and trained["aux"].shape == (2, NUM_CLASSES, 33, 45)
    else:
        assert isinstance(trained, torch.Tensor)
    assert main_logits(trained).shape == (2, NUM_CLASSES, 33, 45)


@pytest.mark.parametrize("preset", ALL)
def test_cpu_bf16_autocast_keeps_the_declared_head_in_fp32(preset: str) -> None:
    model = build(preset).eval()
    dtypes: dict[str, torch.dtype] = {}
    for name in model.head_layers():
        model.get_submodule(name).register_forward_hook(
            lambda module, inputs, out, name=name: dtypes.__setitem__(name, out.dtype)
        )
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(torch.randn(1, 3, 64, 96))
    assert torch.isfinite(logits.float()).all()
    ran_narrow = [name for name in dtypes if is_narrow(model.get_submodule(name))]  # eval skips aux heads
    assert ran_narrow and all(dtypes[name] == torch.float32 for name in ran_narrow), dtypes


def export_script() -> Any:
    """scripts/export.py as a module: the contract is that the project's own exporter handles the model."""
    spec = importlib.util.spec_from_file_location("seglab_export_for_contract", ROOT / "scripts" / "export.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("preset", ALL)
def test_onnx_export_matches_eager_at_another_size(preset: str, tmp_path: Path) -> None:
    onnxruntime = pytest.importorskip("onnxruntime")
    exporter = export_script()
    model = exporter.logits_module(build(preset).eval(), torch.randn(1, 3, 97, 131))
    # the exporter seglab uses by default is dynamo; the TorchScript-based one is 3-5x faster to
    # run here and traces the same forward (tests/test_export.py covers dynamo end to end)
    exporter.export_onnx(model, torch.randn(1, 3, 97, 131), tmp_path / "m.onnx", "legacy", 18)
    session = onnxruntime.InferenceSession(str(tmp_path / "m.onnx"))
    x = torch.randn(2, 3, 70, 109)
    with torch.no_grad():
        eager = model(x).numpy()
    exported = session.run(None, {"image": x.numpy()})[0]
    assert exported.shape == eager.shape == (2, NUM_CLASSES, 70, 109)
    assert abs(exported - eager).max() < 1e-4
