"""Models: every preset built from its config, checked against independent references.

The contract every model keeps (sizes, aux output, channels_last, CPU bf16, export) is tested once
for all presets in tests/test_model_contract.py.
"""

from __future__ import annotations

import logging
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch import nn

from src.data.synthetic import SyntheticSpec, render_sample
from src.models.complexity import count_parameters, gflops
from src.models.contract import main_logits
from src.models.upsample import bilinear_kernel, bilinear_upsampling
from src.utils.errors import UserError
from tests.helpers.models import composed_model, randomize_score_layers

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"
VGG_PRESETS = ["fcn32s", "fcn16s", "fcn8s", "fcn8s_compact", "fcns"]
TV_PRESETS = ["tv_fcn_resnet50", "tv_deeplabv3_resnet50"]
TINY = 1 / 16  # every VGG width becomes max(8, c/16): 8..32 channels, fc6/fc7 256


def build(preset: str, num_classes: int = 3, **overrides: object) -> nn.Module:
    """`instantiate(cfg.model)` for `model=<preset>`, with `model.<key>=value` overrides."""
    cfg = OmegaConf.create({"data": {"num_classes": num_classes}, "model": composed_model(preset)})
    for key, value in overrides.items():
        OmegaConf.update(cfg, f"model.{key}", value)
    return instantiate(cfg.model)


def tiny(preset: str, **overrides: object) -> nn.Module:
    """The preset at the smallest width it allows (torchvision models have only width 1.0)."""
    if preset in VGG_PRESETS:
        overrides.setdefault("backbone.width", TINY)
    return build(preset, **overrides)


# ---------------------------------------------------------------- bilinear upsampling


def test_bilinear_kernel_is_the_separable_tent_on_the_diagonal() -> None:
    weight = bilinear_kernel(3, 3, 4)
    tent = torch.tensor([0.25, 0.75, 0.75, 0.25])
    for i in range(3):
        for j in range(3):
            expected = torch.outer(tent, tent) if i == j else torch.zeros(4, 4)
            torch.testing.assert_close(weight[i, j], expected)
    assert torch.allclose(bilinear_kernel(1, 1, 3)[0, 0, 1], torch.tensor([0.5, 1.0, 0.5]))


@pytest.mark.parametrize("factor", [2, 8, 16, 32])
def test_bilinear_upsampling_reproduces_interpolate(factor: int) -> None:
    rows, cols = torch.meshgrid(torch.arange(6.0), torch.arange(7.0), indexing="ij")
    ramp = torch.stack([0.3 * rows + 0.7 * cols, 2.0 - 0.5 * rows + 0.1 * cols])[None]
    layer = bilinear_upsampling(2, 2, factor)
    with torch.no_grad():
        ours = layer(ramp)
    reference = F.interpolate(ramp, scale_factor=factor, mode="bilinear", align_corners=False)
    assert ours.shape == reference.shape == (1, 2, 6 * factor, 7 * factor)
    inner = (..., slice(factor, -factor), slice(factor, -factor))  # borders differ: zero padding
    torch.testing.assert_close(ours[inner], reference[inner])
    assert layer.weight.requires_grad
    assert not bilinear_upsampling(2, 2, factor, learnable=False).weight.requires_grad


def test_fcn32s_output_is_the_bilinear_interpolation_of_its_scores() -> None:
    model = randomize_score_layers(tiny("fcn32s")).eval()
    x = torch.randn(1, 3, 128, 160)
    with torch.no_grad():
        _, _, scores = model.encode(x)
        logits = model(x)
    reference = F.interpolate(scores, scale_factor=32, mode="bilinear", align_corners=False)
    torch.testing.assert_close(logits[..., 32:-32, 32:-32], reference[..., 32:-32, 32:-32])


# ---------------------------------------------------------------- size and cost


def test_paper_parameter_counts() -> None:
    """FCN-8s on VGG16 has the Caffe model's 134.5M parameters; 32s/16s differ by their heads."""
    with torch.device("meta"):  # shapes only: no memory, no init time
        vgg = torchvision.models.vgg16()
        counts = {
            p: count_parameters(build(p, 21, **{"backbone.name": "vgg16"})) for p in VGG_PRESETS[:3]
        }
    print({k: f"{v / 1e6:.3f}M" for k, v in counts.items()})
    assert abs(counts["fcn8s"] - 134.5e6) / 134.5e6 < 0.005
    # Independent reference: torchvision's VGG16 convs and fc6/fc7, the heads counted by hand.
    trunk = sum(count_parameters(m) for m in (vgg.features, vgg.classifier[0], vgg.classifier[3]))
    trunk += 4096 * 21 + 21  # score_fr
    c = 21 * 21  # a dense class-to-class upsampling kernel has c * k * k weights
    assert counts["fcn32s"] == trunk + c * 64 * 64
    assert counts["fcn16s"] == trunk + (512 * 21 + 21) + c * 4 * 4 + c * 32 * 32
    assert (
        counts["fcn8s"] == trunk + (512 * 21 + 21) + (256 * 21 + 21) + 2 * c * 4 * 4 + c * 16 * 16
    )


def test_complexity_against_hand_counts() -> None:
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.Conv2d(8, 2, 1))
    model[2].weight.requires_grad_(False)
    assert count_parameters(model) == (8 * 27 + 8) + 16 + (16 + 2)
    assert count_parameters(model, trainable_only=True) == (8 * 27 + 8) + 16 + 2
    macs = 20 * 24 * (8 * 27 + 2 * 8)
    assert gflops(model, input_size=(20, 24)) == pytest.approx(2 * macs / 1e9)


# ---------------------------------------------------------------- the model contract


@pytest.mark.slow
@pytest.mark.parametrize("preset", TV_PRESETS)
def test_torchvision_output_at_voc_size(preset: str) -> None:
    with torch.no_grad():
        assert tiny(preset).eval()(torch.randn(1, 3, 375, 500)).shape == (1, 3, 375, 500)


@pytest.mark.parametrize("preset", VGG_PRESETS + TV_PRESETS)
def test_gradients_reach_every_trainable_parameter(preset: str) -> None:
    torch.manual_seed(0)
    model = tiny(preset).train()
    images, target = torch.randn(2, 3, 64, 64), torch.randint(0, 3, (2, 64, 64))

    def backward() -> None:
        model.zero_grad()
        output = model(images)
        loss = F.cross_entropy(main_logits(output), target)
        if isinstance(output, dict):
            loss = loss + 0.5 * F.cross_entropy(output["aux"], target)
        loss.backward()

    # The FCNs' score layers start at zero (the paper's init), so the layers below them get
    # gradient from the second step on: check the gradients after one update.
    backward()
    torch.optim.SGD(model.parameters(), lr=0.1).step()
    backward()
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert trainable
    dead = [n for n, p in trainable if p.grad is None or not p.grad.abs().sum() > 0]
    assert dead == [], f"{preset}: no gradient for {dead}"


@pytest.mark.parametrize(
    ("preset", "two_x", "final"),
    [
        ("fcn16s", ["upscore2"], ["upscore16"]),
        ("fcn8s", ["upscore2", "upscore_pool4"], ["upscore8"]),
        ("fcn8s_compact", ["upsample_2x_1", "upsample_2x_2"], ["upsample_8x"]),
        ("fcns", [f"deconvs.{i}" for i in range(5)], []),
    ],
)
def test_learnable_upsampling_governs_the_2x_layers(preset, two_x, final) -> None:
    for learnable in (True, False):
        params = dict(tiny(preset, learnable_upsampling=learnable).named_parameters())
        for name in two_x:
            assert params[f"{name}.weight"].requires_grad is learnable, (name, learnable)
        for name in final:  # the paper fixes the final upsampling
            assert not params[f"{name}.weight"].requires_grad, name


@pytest.mark.parametrize("preset", TV_PRESETS)
def test_torchvision_without_aux_head_returns_logits_in_training(preset: str) -> None:
    no_aux = tiny(preset, aux_loss=False).train()
    assert no_aux(torch.randn(2, 3, 40, 56)).shape == (2, 3, 40, 56)
    assert no_aux.head_layers() == ["net.classifier.4"]


def test_builder_rejects_bad_values() -> None:
    with pytest.raises(InstantiationException, match=r"model.backbone.name='vgg19' is not one of"):
        tiny("fcn8s", **{"backbone.name": "vgg19"})
    with pytest.raises(InstantiationException, match=r"unknown keys \['depth'\]"):
        tiny("fcns", **{"backbone.depth": 16})


# ---------------------------------------------------------------- weights


@pytest.fixture(scope="module")
def vgg16_bn_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """torchvision's vgg16_bn state dict (random weights); fc6 is left out to keep the file small."""
    state = torchvision.models.vgg16_bn(weights=None).state_dict()
    path = tmp_path_factory.mktemp("weights") / "vgg16_bn.pth"
    torch.save({k: v for k, v in state.items() if not k.startswith("classifier.0.")}, path)
    return path


@pytest.mark.parametrize("preset", ["fcn8s_compact", "fcns"])
def test_backbone_weights_from_a_file(preset: str, vgg16_bn_file: Path) -> None:
    state = torch.load(vgg16_bn_file, weights_only=True)
    model = build(preset, **{"backbone.weights": str(vgg16_bn_file)})
    loaded = model.backbone.state_dict()
    assert set(loaded) == {k for k in state if k.startswith("features.")}
    for key, tensor in loaded.items():
        torch.testing.assert_close(tensor, state[key], msg=key)


def test_backbone_file_with_wrong_keys_is_refused(vgg16_bn_file: Path, tmp_path: Path) -> None:
    state = torch.load(vgg16_bn_file, weights_only=True)
    state["features.0.kernel"] = state.pop("features.0.weight")
    bad = tmp_path / "renamed.pth"
    torch.save(state, bad)
    from src.models.fcn_compact import FCN8sCompact

    with pytest.raises(ValueError, match=r"missing keys \['features.0.weight'\]") as error:
        FCN8sCompact(3, {"weights": str(bad)})
    assert "unexpected keys ['features.0.kernel']" in str(error.value)
    assert isinstance(error.value, UserError)
    with pytest.raises(ValueError, match="model.backbone.width=0.25"):
        FCN8sCompact(3, {"weights": str(vgg16_bn_file), "width": 0.25})
    with pytest.raises(ValueError, match="model.backbone.weights=.*no such file"):
        FCN8sCompact(3, {"weights": str(tmp_path / "absent.pth")})


@pytest.mark.parametrize(
    ("preset", "file"), [("fcn8s_compact", "vgg16_bn-"), ("tv_fcn_resnet50", "resnet50-")]
)
def test_imagenet_offline_says_how_to_pass_a_file(preset, file, monkeypatch, tmp_path) -> None:
    def offline(*args: object, **kwargs: object) -> None:
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path))  # no cached download
    monkeypatch.setattr(torch.hub, "urlopen", offline)
    with pytest.raises(InstantiationException) as error:
        build(preset, **{"backbone.weights": "imagenet"})
    cause = error.value.__cause__
    assert isinstance(cause, RuntimeError) and isinstance(cause, UserError)
    assert f"model.backbone.weights=/path/to/{file}" in str(cause)


def test_init_from_copies_matching_tensors(tmp_path: Path, caplog) -> None:
    """Staged training: FCN-32s -> 16s -> 8s from Lightning checkpoints ("model." keys)."""
    fcn32 = tiny("fcn32s")
    ckpt32 = tmp_path / "fcn32s.ckpt"
    torch.save(
        {"state_dict": {f"model.{k}": v for k, v in fcn32.state_dict().items()}, "epoch": 3}, ckpt32
    )
    with caplog.at_level(logging.INFO):
        fcn16 = tiny("fcn16s", init_from=str(ckpt32))
    own16 = fcn16.state_dict()
    shared = [k for k, v in fcn32.state_dict().items() if k in own16 and own16[k].shape == v.shape]
    assert f"copied {len(shared)} of {len(own16)} tensors" in caplog.text
    assert any(k.startswith("fc6") for k in shared) and "score_fr.weight" in shared
    for key in shared:
        torch.testing.assert_close(own16[key], fcn32.state_dict()[key], msg=key)
    assert not own16["score_pool4.weight"].any()  # the new skip starts at zero (paper)

    with torch.no_grad():
        fcn16.score_pool4.weight.normal_()
    ckpt16 = tmp_path / "fcn16s.pth"
    torch.save(fcn16.state_dict(), ckpt16)
    fcn8 = tiny("fcn8s", init_from=str(ckpt16))
    torch.testing.assert_close(fcn8.score_pool4.weight, fcn16.score_pool4.weight)
    torch.testing.assert_close(fcn8.upscore2.weight, fcn16.upscore2.weight)
    assert not fcn8.score_pool3.weight.any()


# ---------------------------------------------------------------- overfitting one batch


def mean_iou(pred: np.ndarray, mask: np.ndarray, num_classes: int) -> float:
    """mIoU over classes present in labels or predictions, pixels labelled 255 ignored."""
    keep = mask != 255
    cm = np.bincount(num_classes * mask[keep] + pred[keep], minlength=num_classes**2)
    cm = cm.reshape(num_classes, num_classes)
    inter = np.diag(cm)
    union = cm.sum(0) + cm.sum(1) - inter
    return float((inter[union > 0] / union[union > 0]).mean())


def embedded_batch(size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Training samples 1 and 3 of the embedded dataset drawn at `size` px, ImageNet-normalised.

    They hold discs and a triangle: shapes a stride-32 output can trace at 256 px. On crosses and
    rings (samples 0 and 2) a fixed 32x bilinear upsampling plateaus near mIoU 0.8 at 256 px: the
    coarseness the paper's skips fix, not a training failure.
    """
    spec = SyntheticSpec(min_size=size, max_size=size)
    images, masks = zip(*(render_sample(spec, "train", i) for i in (1, 3)), strict=True)
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    x = (x - mean[:, None, None]) / std[:, None, None]
    return x, torch.from_numpy(np.stack(masks)).long()


OVERFIT = {  # preset: (image size, max steps): 8 output pixels across the image for each
    "fcn32s": (256, 300),
    "fcn16s": (128, 200),
    "fcn8s": (64, 200),
    "fcn8s_compact": (64, 200),
    "fcns": (64, 300),
}


@pytest.mark.slow
@pytest.mark.parametrize("preset", list(OVERFIT))
def test_overfits_one_batch(preset: str) -> None:
    size, max_steps = OVERFIT[preset]
    torch.manual_seed(0)
    x, mask = embedded_batch(size)
    # Dropout off: memorising one batch is the point here.
    overrides = {"dropout": 0.0} if preset in ("fcn32s", "fcn16s", "fcn8s") else {}
    model = build(preset, num_classes=6, **{"backbone.width": 0.125}, **overrides)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    history = []
    for step in range(1, max_steps + 1):
        loss = F.cross_entropy(model.train()(x), mask, ignore_index=255)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % 25 == 0:
            with torch.no_grad():
                pred = model.eval()(x).argmax(1)
            history.append(mean_iou(pred.numpy().ravel(), mask.numpy().ravel(), 6))
            if history[-1] >= 0.9:
                break
    assert history[-1] >= 0.9, f"{preset}: mIoU every 25 steps {history}"
