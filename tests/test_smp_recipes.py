"""The smp recipes (conf/experiment/): each composes with its dataset and holds its reference's values.

The expected values are mmsegmentation's, read from the configs each recipe's comment names and
typed here independently of the YAML files; docs/models.md lists the figure each should reach.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from omegaconf import OmegaConf

import src  # noqa: F401  (registers the ${seglab.class_names:...} resolvers the data configs use)
from tests.conftest import ROOT, compose_config

MMSEG_SCHEDULE = {  # schedule_80k / schedule_160k / schedule_40k: SGD and poly by iteration
    "optim._target_": "torch.optim.SGD",
    "optim.lr": 0.01,
    "optim.momentum": 0.9,
    "optim.weight_decay": 5e-4,
    "module.scheduler._target_": "torch.optim.lr_scheduler.PolynomialLR",
    "module.scheduler.power": 0.9,
    "trainer.max_epochs": -1,
}
MMSEG_AUGMENT = {  # RandomResize ratio (0.5, 2.0), RandomCrop cat_max_ratio 0.75, flip, photometric
    "data.augment.scale_range": [0.5, 2.0],
    "data.augment.cat_max_ratio": 0.75,
    "data.augment.hflip_prob": 0.5,
    "data.augment.photometric": True,
}
DEEPLAB_D8 = {
    "model._target_": "src.models.smp.SMPModel",
    "model.arch": "DeepLabV3Plus",
    "model.encoder": "resnet50",
    "model.encoder_weights": "imagenet",
    "model.encoder_output_stride": 8,
    "model.decoder_atrous_rates": [12, 24, 36],
    "loss.ce.weight": 1.0,
}
RECIPES: dict[str, dict[str, Any]] = {
    # deeplabv3plus_r50b-d8_4xb2-80k_cityscapes-512x1024.py: 4 GPUs x 2 images
    "cityscapes_deeplabv3plus_r50": {
        **MMSEG_SCHEDULE,
        **MMSEG_AUGMENT,
        **DEEPLAB_D8,
        "data._target_": "src.data.cityscapes.CityscapesDataModule",
        "data.num_classes": 19,
        "data.batch_size": 8,
        "data.augment.crop_size": [512, 1024],
        "data.augment.base_size": 1024,
        "data.inference.mode": "whole",
        "trainer.max_steps": 80_000,
        "trainer.val_check_interval": 8_000,
    },
    # deeplabv3plus_r50-d8_4xb4-160k_ade20k-512x512.py: 4 GPUs x 4 images
    "ade20k_deeplabv3plus_r50": {
        **MMSEG_SCHEDULE,
        **MMSEG_AUGMENT,
        **DEEPLAB_D8,
        "data._target_": "src.data.ade20k.ADE20KDataModule",
        "data.num_classes": 150,
        "data.batch_size": 16,
        "data.augment.crop_size": 512,
        "data.augment.base_size": 512,
        "data.inference.mode": "whole",
        "trainer.max_steps": 160_000,
        "trainer.val_check_interval": 16_000,
    },
    # unet-s5-d16_fcn_4xb4-ce-1.0-dice-3.0-40k_drive-64x64.py: 4 GPUs x 4 images
    "folder_unet_resnet34": {
        **MMSEG_SCHEDULE,
        **MMSEG_AUGMENT,
        "data._target_": "src.data.folder.FolderDataModule",
        "data.num_classes": 2,
        "data.batch_size": 16,
        "data.augment.crop_size": 64,
        "data.augment.base_size": 565,
        "data.inference.mode": "slide",
        "data.inference.crop_size": 64,
        "data.inference.stride": 42,
        "model._target_": "src.models.smp.SMPModel",
        "model.arch": "Unet",
        "model.encoder": "resnet34",
        "model.encoder_weights": "imagenet",
        "loss.ce.weight": 1.0,
        "loss.dice.weight": 3.0,
        "trainer.max_steps": 40_000,
        "trainer.val_check_interval": 4_000,
    },
}
# mmseg's single-scale val figure for each (mIoU; mDice for the U-Net): what docs/models.md quotes
REFERENCE = {
    "cityscapes_deeplabv3plus_r50": "80.28",
    "ade20k_deeplabv3plus_r50": "43.95",
    "folder_unet_resnet34": "88.71",
}


def recipe(name: str, tmp_path: Path, *overrides: str) -> Any:
    """`python src/train.py experiment=<name> data.root=...` as composed, resolved."""
    cfg = compose_config(
        "train", [f"experiment={name}", f"data.root={tmp_path}", *overrides], tmp_path / "run"
    )
    run_config = OmegaConf.masked_copy(cfg, [key for key in cfg if key != "hydra"])
    return OmegaConf.to_container(run_config, resolve=True, throw_on_missing=False)


@pytest.mark.parametrize("name", RECIPES)
def test_a_recipe_composes_with_its_dataset_and_holds_the_references_values(
    name: str, tmp_path: Path
) -> None:
    cfg = OmegaConf.create(recipe(name, tmp_path))
    found = {key: OmegaConf.select(cfg, key, default="<absent>") for key in RECIPES[name]}
    assert found == RECIPES[name]
    assert (
        cfg.model.num_classes == cfg.data.num_classes
        and len(cfg.data.class_names) == cfg.data.num_classes
    )


@pytest.mark.parametrize("name", ["cityscapes_deeplabv3plus_r50", "ade20k_deeplabv3plus_r50"])
def test_the_deeplab_recipes_build_a_resnet50_dilated_to_output_stride_8(
    name: str, tmp_path: Path
) -> None:
    pytest.importorskip("segmentation_models_pytorch")
    from src.utils.checkpoint import build_checked

    model_cfg = recipe(name, tmp_path, "model.encoder_weights=null")["model"]  # nothing downloads
    encoder = build_checked(model_cfg).net.encoder
    assert encoder.output_stride == 8
    assert encoder.layer3[1].conv2.dilation == (2, 2) and encoder.layer4[1].conv2.dilation == (4, 4)
    assert encoder.layer3[0].conv2.stride == encoder.layer4[0].conv2.stride == (1, 1)


def test_docs_list_every_recipe_with_its_reference_figure_and_source() -> None:
    text = (ROOT / "docs" / "models.md").read_text()
    for name, figure in REFERENCE.items():
        rows = [
            line
            for line in text.splitlines()
            if line.startswith("|") and f"`experiment={name}`" in line
        ]
        assert len(rows) == 1, name
        assert re.search(rf"\|\s*{re.escape(figure)}\b", rows[0]) and "mmsegmentation" in rows[0], (
            rows[0]
        )
