"""Architectures from segmentation_models_pytorch: sizes, encoder weights, errors, smoke runs.

The shared contract (odd sizes, channels_last, CPU bf16, ONNX) is tests/test_model_contract.py;
this file covers what only the smp wrapper does. Encoders are timm's tiny test models (or smp's
resnet18), weights are written to tmp files, and every download is made to fail: nothing here
touches the network.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("segmentation_models_pytorch")

import huggingface_hub  # noqa: E402  (the smp extra brings it)
import hydra  # noqa: E402
import timm  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

from src.models.backbones import ModelConfigError, WeightsDownloadError  # noqa: E402
from src.models.smp import SMPModel  # noqa: E402
from src.utils.errors import exit_on_user_error  # noqa: E402

TINY = "tu-test_resnet"  # timm's test ResNet: 0.5M parameters, strides 2..32
NUM_CLASSES = 3
ARCHS = {  # every smp architecture with an encoder it takes, and smaller decoders where it helps
    "Unet": (TINY, {"decoder_channels": [32, 16, 16, 16, 16]}),
    "UnetPlusPlus": (TINY, {"decoder_channels": [32, 16, 16, 16, 16]}),
    "MAnet": (TINY, {"decoder_channels": [32, 16, 16, 16, 16]}),
    "Linknet": (TINY, {}),
    "FPN": (TINY, {"decoder_pyramid_channels": 32, "decoder_segmentation_channels": 64}),
    "PSPNet": (TINY, {"psp_out_channels": 32}),
    "DeepLabV3": (TINY, {"decoder_channels": 32}),
    "DeepLabV3Plus": (TINY, {"decoder_channels": 32}),
    "PAN": (TINY, {"decoder_channels": 16}),
    "UPerNet": (TINY, {"decoder_channels": 32}),
    "Segformer": (TINY, {"decoder_segmentation_channels": 32}),
    "DPT": (
        "tu-test_vit",
        {"decoder_intermediate_channels": [16, 16, 16, 16], "decoder_fusion_channels": 16},
    ),
}


def test_every_architecture_gives_logits_at_any_size_from_32() -> None:
    for arch, (encoder, arch_args) in ARCHS.items():
        model = SMPModel(arch, encoder, NUM_CLASSES, **arch_args).eval()
        for height, width in ((45, 70), (32, 32)):  # the contract test runs the presets at 97x131
            with torch.no_grad():
                logits = model(torch.randn(1, 3, height, width))
            assert logits.shape == (1, NUM_CLASSES, height, width), (arch, height, width)


@pytest.mark.parametrize(
    ("arch", "multiple"), [("Unet", 32), ("DeepLabV3Plus", 16), ("DeepLabV3", 8)]
)
def test_the_input_is_reflection_padded_to_the_encoder_stride_and_the_logits_cropped(
    arch: str, multiple: int
) -> None:
    model = SMPModel(arch, TINY, NUM_CLASSES).eval()
    x = torch.randn(2, 3, 37, 50)
    pad_h, pad_w = -37 % multiple, -50 % multiple
    with torch.no_grad():
        reference = model.net(F.pad(x, (0, pad_w, 0, pad_h), mode="reflect"))[..., :37, :50]
        torch.testing.assert_close(model(x), reference)
    assert model.size_multiple == multiple


def test_architecture_names_ignore_case_and_unknown_ones_are_named() -> None:
    assert type(SMPModel("deeplabv3plus", TINY, 2).net).__name__ == "DeepLabV3Plus"
    with pytest.raises(
        ModelConfigError, match=r"model\.arch='UNet3' is not one of smp's architectures \[.*'Unet'"
    ):
        SMPModel("UNet3", TINY, 2)
    with pytest.raises(
        ModelConfigError, match=r"model\.encoder='resnet35' is neither one of smp's encoders"
    ):
        SMPModel("Unet", "resnet35", 2)
    with pytest.raises(
        ModelConfigError, match=r"model\.encoder='tu-no_such_net': timm has no model"
    ):
        SMPModel("Unet", "tu-no_such_net", 2)
    # smp would ignore an argument it does not know: seglab names it
    with pytest.raises(
        ModelConfigError, match=r"model\.decoder_chanels is not an argument of smp's Unet"
    ):
        SMPModel("Unet", "resnet18", 2, decoder_chanels=[8, 8, 8, 8, 8])
    with pytest.raises(
        ModelConfigError,
        match=r"model\.arch=DeepLabV3Plus model\.encoder=tu-test_resnet: .*8 or 16",
    ):
        SMPModel("DeepLabV3Plus", TINY, 2, encoder_output_stride=32)


def torchvision_resnet18_state() -> dict[str, torch.Tensor]:
    """A random torchvision ResNet-18 state dict: the layout smp's resnet18 encoder loads."""
    import torchvision

    torch.manual_seed(1)
    return torchvision.models.resnet18().state_dict()


def test_an_smp_encoder_loads_a_local_pth_file_classifier_and_all(tmp_path: Path) -> None:
    state = torchvision_resnet18_state()
    torch.save(state, tmp_path / "resnet18.pth")
    model = SMPModel("FPN", "resnet18", NUM_CLASSES, encoder_weights=str(tmp_path / "resnet18.pth"))
    loaded = model.net.encoder.state_dict()
    assert set(state) - set(loaded) == {
        "fc.weight",
        "fc.bias",
    }  # the ImageNet classifier is dropped
    for name, tensor in loaded.items():
        torch.testing.assert_close(tensor, state[name], msg=name)


def test_a_timm_encoder_loads_a_local_safetensors_file(tmp_path: Path) -> None:
    torch.manual_seed(2)
    state = timm.create_model("test_resnet").state_dict()
    save_file(state, tmp_path / "test_resnet.safetensors")
    model = SMPModel(
        "Unet", TINY, NUM_CLASSES, encoder_weights=str(tmp_path / "test_resnet.safetensors")
    )
    loaded = model.net.encoder.model.state_dict()  # timm's features-only copy of the network
    assert len(loaded) > 50
    for name, tensor in loaded.items():
        torch.testing.assert_close(tensor, state[name], msg=name)


def test_a_weights_file_that_does_not_fit_is_refused_with_its_keys(tmp_path: Path) -> None:
    state = torchvision_resnet18_state()
    del state["layer4.1.conv2.weight"]
    state["layer5.0.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "edited.pth")
    with pytest.raises(ModelConfigError) as caught:
        SMPModel("Unet", "resnet18", 2, encoder_weights=str(tmp_path / "edited.pth"))
    message = str(caught.value)
    assert (
        f"model.encoder_weights={tmp_path / 'edited.pth'} does not fit encoder resnet18" in message
    )
    assert (
        "missing keys (1): layer4.1.conv2.weight" in message
        and "unexpected keys (1): layer5.0.weight" in message
    )
    # a timm encoder is checked against the whole timm model (timm itself would load it partially)
    save_file({"conv1.0.weight": torch.zeros(8, 3, 3, 3)}, tmp_path / "wrong.safetensors")
    with pytest.raises(
        ModelConfigError, match=r"does not fit encoder tu-test_resnet: missing keys \(\d+\)"
    ):
        SMPModel("Unet", TINY, 2, encoder_weights=str(tmp_path / "wrong.safetensors"))


def test_missing_unreadable_and_pickled_weight_files_are_named(tmp_path: Path) -> None:
    with pytest.raises(
        ModelConfigError, match=r"model\.encoder_weights=/no/such\.pth: no such file"
    ):
        SMPModel("Unet", "resnet18", 2, encoder_weights="/no/such.pth")
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ModelConfigError, match=r"junk\.safetensors: not a safetensors file"):
        SMPModel("Unet", "resnet18", 2, encoder_weights=str(tmp_path / "junk.safetensors"))
    torch.save({"conv1.weight": torch.zeros(1), "note": Path("x")}, tmp_path / "pickled.pth")
    with pytest.raises(ModelConfigError, match=r"pickled\.pth: not a tensor-only state dict"):
        SMPModel("Unet", "resnet18", 2, encoder_weights=str(tmp_path / "pickled.pth"))
    with pytest.raises(
        ModelConfigError, match=r"encoder resnet18 has weights \[.*'imagenet'.*or pass the path"
    ):
        SMPModel("Unet", "resnet18", 2, encoder_weights="imagenet22k")


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """Every Hugging Face download fails as it does without a network; returns what was asked for."""
    asked: list[tuple[str, str]] = []

    def no_network(repo_id: str, filename: str, **kwargs: object) -> str:
        asked.append((repo_id, filename))
        raise huggingface_hub.errors.LocalEntryNotFoundError(
            "An error happened while trying to locate the file on the Hub and we cannot find the "
            "requested files in the local cache."
        )

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", no_network)
    return asked


@pytest.mark.parametrize(
    ("encoder", "repo", "filename"),
    [
        ("resnet18", "smp-hub/resnet18.imagenet", "model.safetensors"),
        (TINY, "timm/test_resnet.r160_in1k", "model.safetensors"),
    ],
)
def test_imagenet_offline_names_the_file_to_download_and_the_key_to_pass_it(
    offline: list, encoder: str, repo: str, filename: str
) -> None:
    with pytest.raises(WeightsDownloadError) as caught:
        SMPModel("Unet", encoder, 2, encoder_weights="imagenet")
    message = str(caught.value)
    assert offline == [(repo, filename)]
    assert message.startswith(
        f"model.encoder_weights=imagenet: could not download the weights of encoder {encoder}"
    )
    assert f"https://huggingface.co/{repo}/resolve/" in message
    assert message.endswith(f"pass its path: model.encoder_weights=/path/to/{filename}")


# preset -> overrides that make it tiny: timm's test ResNet for the encoder, narrow decoders
SMOKE_OVERRIDES = {
    "unet_resnet34": [f"model.encoder={TINY}", "model.decoder_channels=[32,16,16,16,16]"],
    "fpn_resnet50": [
        f"model.encoder={TINY}",
        "model.decoder_pyramid_channels=32",
        "model.decoder_segmentation_channels=64",
    ],
    "deeplabv3plus_resnet50": [f"model.encoder={TINY}", "+model.decoder_channels=64"],
    "segformer_mit_b0": [f"model.encoder={TINY}", "model.decoder_segmentation_channels=32"],
}


@pytest.mark.parametrize("preset", SMOKE_OVERRIDES)
def test_every_preset_trains_a_smoke_run_and_rebuilds_from_its_checkpoint(
    smoke_cfg, preset: str
) -> None:
    from src.train import train
    from src.utils.checkpoint import model_from_checkpoint

    # debug=smoke shrinks the VGG models through model.backbone.width, which smp models do not have
    cfg = smoke_cfg(
        f"model={preset}",
        "~model.backbone",
        *SMOKE_OVERRIDES[preset],
        "trainer.max_epochs=1",
        "trainer.limit_val_batches=1",
        "logger=csv",
    )
    metrics = train(cfg)
    assert torch.isfinite(torch.tensor(metrics["train/loss"])) and 0.0 <= metrics["val/mIoU"] <= 1.0
    model, _ = model_from_checkpoint(Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt")
    assert isinstance(model, SMPModel) and type(model.net).__name__ == cfg.model.arch
    with torch.no_grad():
        assert model(torch.randn(1, 3, 45, 70)).shape == (1, 6, 45, 70)


def test_debug_smoke_width_is_named_for_smp_models(smoke_cfg) -> None:
    with (
        pytest.raises(
            SystemExit, match=r"model\.backbone: smp models have none .* add ~model\.backbone"
        ),
        exit_on_user_error(),
    ):
        hydra.utils.instantiate(smoke_cfg("model=unet_resnet34").model)
