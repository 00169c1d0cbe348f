"""The FCN reference recipes as experiments, checked piece by piece without VOC.

The data side runs on the embedded generator's reference layout (src/data/synthetic_sbd.py: SBD
as released with .mat masks, a VOC2012 whose val holds a few seg11valid ids).
"""

from __future__ import annotations

import importlib.util
import json
import re
import sys
import tomllib
from pathlib import Path
from types import SimpleNamespace

import hydra
import lightning as L
import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from omegaconf import OmegaConf
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from src.data.masks import MaskDecoder, SampleError
from src.data.synthetic_sbd import ReferenceLayoutSpec, save_sbd_mat, write_synthetic_voc_sbd
from src.data.voc import packaged_split_ids
from src.metrics import SegmentationMetrics
from src.train import train
from src.utils.build import build_datamodule, build_loss, build_module
from src.utils.errors import UserError, find_user_error
from src.utils.resolvers import RequiredValueError, check_required
from tests.conftest import ROOT, compose_config
from tests.helpers.cli import run_script

EXPERIMENTS = ("voc_fcn32s", "voc_fcn16s", "voc_fcn8s", "voc_fcn8s_atonce")
FINAL_UPSAMPLING = {"voc_fcn32s": "upscore", "voc_fcn16s": "upscore16", "voc_fcn8s": "upscore8",
                    "voc_fcn8s_atonce": "upscore8"}  # fmt: skip
TINY = "model.backbone.width=0.0625"


@pytest.fixture(scope="module")
def reference_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding VOCdevkit/VOC2012 and benchmark_RELEASE, written once for this module."""
    root = tmp_path_factory.mktemp("reference_layout")
    write_synthetic_voc_sbd(root)
    return root


def reference_cfg(experiment: str, root: Path, out: Path, *overrides: str):
    """`experiment=<name>` on the reference layout at 1/16 width, CPU, no workers, no download."""
    stage_inputs = (
        ["model.init_from=null"] if experiment in ("voc_fcn16s", "voc_fcn8s") else []
    ) + (["model.backbone.weights=null"] if experiment in ("voc_fcn32s", "voc_fcn8s_atonce") else [])
    return compose_config(
        "train",
        [
            f"experiment={experiment}",
            f"data.root={root}",
            f"data.sbd_root={root}",
            TINY,
            "data.num_workers=0",
            "data.pin_memory=false",
            "trainer.accelerator=cpu",
            "callbacks.progress_bar=null",
            "model_size_at=null",
            f"paths.log_dir={out}/logs",
            *stage_inputs,
            *overrides,
        ],
        out,
    )


# ---------------------------------------------------------------- data: seg11valid and SBD as released


def test_seg11valid_ships_with_the_package_and_avoids_sbd_train(reference_root: Path) -> None:
    ids = packaged_split_ids("seg11valid")
    assert len(ids) == 736 == len(set(ids))
    assert all(re.fullmatch(r"20(07|08|09|10|11)_\d{6}", i) for i in ids)
    sbd_train = (reference_root / "benchmark_RELEASE" / "dataset" / "train.txt").read_text().split()
    assert sbd_train and not set(ids) & set(sbd_train)
    # an installed package carries the list: pyproject's package data names it
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "splits/*.txt" in pyproject["tool"]["setuptools"]["package-data"]["src.data"]
    assert "scipy" in " ".join(pyproject["project"]["dependencies"])


def test_sbd_mat_masks_decode_and_bad_ones_name_the_file(tmp_path: Path) -> None:
    mask = np.random.default_rng(0).integers(0, 21, (9, 13)).astype(np.uint8)
    save_sbd_mat(tmp_path / "good.mat", mask)
    decoder = MaskDecoder(21)
    np.testing.assert_array_equal(decoder(tmp_path / "good.mat"), mask)

    (tmp_path / "garbage.mat").write_bytes(b"not a MATLAB file" * 8)
    from scipy.io import savemat

    savemat(tmp_path / "no_struct.mat", {"labels": mask})
    for name in ("garbage.mat", "no_struct.mat"):
        with pytest.raises(SampleError, match=re.escape(str(tmp_path / name))):
            decoder(tmp_path / name)


def test_reference_data_trains_on_sbd_train_and_validates_on_seg11valid(
    reference_root: Path, tmp_path: Path
) -> None:
    cfg = reference_cfg("voc_fcn32s", reference_root, tmp_path)
    datamodule = build_datamodule(cfg.data)
    sbd, voc = reference_root / "benchmark_RELEASE" / "dataset", reference_root / "VOCdevkit" / "VOC2012"
    train_pairs = datamodule.split_pairs(datamodule.train_split)
    assert [image.stem for image, _ in train_pairs] == (sbd / "train.txt").read_text().split()
    assert all(m.parent == sbd / "cls" and m.suffix == ".mat" for _, m in train_pairs)
    val_ids = [image.stem for image, _ in datamodule.split_pairs("seg11valid")]
    assert val_ids == packaged_split_ids("seg11valid")[: ReferenceLayoutSpec().seg11valid]
    sample = datamodule.dataset(datamodule.train_split, datamodule.augment)[0]
    image, mask = np.asarray(Image.open(train_pairs[0][0])), MaskDecoder(21)(train_pairs[0][1])
    assert tuple(sample["image"].shape) == (3, *image.shape[:2])  # the whole image, no crop
    np.testing.assert_array_equal(sample["mask"].numpy(), mask)

    # validating on all of VOC val instead: the SBD train images it holds leave the training set
    full_val = build_datamodule(reference_cfg("voc_fcn32s", reference_root, tmp_path, "data.val_split=val").data)
    left = {image.stem for image, _ in full_val.split_pairs("sbd_train")}
    assert not left & set((voc / "ImageSets" / "Segmentation" / "val.txt").read_text().split())
    assert len(left) == len(train_pairs) - ReferenceLayoutSpec().overlap

    with pytest.raises(UserError, match="data.sbd_root=.*benchmark_RELEASE/dataset"):
        build_datamodule(reference_cfg("voc_fcn32s", reference_root, tmp_path, f"data.sbd_root={tmp_path}").data)


# ---------------------------------------------------------------- model


@pytest.mark.slow
def test_fc6_fc7_of_a_vgg16_file_reproduce_its_classifier(tmp_path: Path) -> None:
    """A torchvision-layout VGG16 file (as vgg16-00b39a1b.pth): convs into the stages, fc6/fc7
    reshaped to convolutions, so the FCN's fc7 at the centre is the classifier's."""
    torch.manual_seed(0)
    vgg = torchvision.models.vgg16(weights=None).eval()
    state = vgg.state_dict()
    torch.save(state, tmp_path / "vgg16.pth")
    cfg = compose_config(
        "train", ["experiment=voc_fcn32s", f"model.backbone.weights={tmp_path / 'vgg16.pth'}"], tmp_path
    )
    fcn = hydra.utils.instantiate(cfg.model).eval()
    torch.testing.assert_close(fcn.backbone.features[28].weight, state["features.28.weight"])
    torch.testing.assert_close(fcn.fc6.weight.flatten(1), state["classifier.0.weight"])
    torch.testing.assert_close(fcn.fc7.weight.flatten(1), state["classifier.3.weight"])
    torch.testing.assert_close(fcn.fc6.bias, state["classifier.0.bias"])
    image = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        expected = vgg.classifier[:5](torch.flatten(vgg.avgpool(vgg.features(image)), 1))
        fc7 = fcn.fc7_features(fcn.backbone(image)[-1])
    assert fc7.shape[-2:] == (7, 7)
    # the centre of the 7x7 map is the one fc6 position whose 7x7 window is all of pool5
    torch.testing.assert_close(fc7[0, :, 3, 3], expected[0], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_reference_upsampling_is_fixed_bilinear(experiment: str, tmp_path: Path, reference_root: Path) -> None:
    """Every deconvolution of the reference nets is fixed (lr_mult 0): the final one gets no gradient."""
    model = hydra.utils.instantiate(reference_cfg(experiment, reference_root, tmp_path).model)
    upsampling = {n: m for n, m in model.named_modules() if isinstance(m, torch.nn.ConvTranspose2d)}
    assert FINAL_UPSAMPLING[experiment] in upsampling
    assert not any(p.requires_grad for m in upsampling.values() for p in m.parameters())
    with torch.no_grad():  # untrained score layers are zero: give the logits a value
        model.score_fr.weight.normal_(std=0.1)
    model(torch.randn(1, 3, 64, 96)).square().sum().backward()
    assert all(m.weight.grad is None for m in upsampling.values())
    assert model.score_fr.weight.grad is not None


def test_atonce_scales_are_fixed_and_feed_the_score_layers(reference_root: Path, tmp_path: Path) -> None:
    model = hydra.utils.instantiate(reference_cfg("voc_fcn8s_atonce", reference_root, tmp_path).model).eval()
    staged = hydra.utils.instantiate(reference_cfg("voc_fcn8s", reference_root, tmp_path).model)
    assert model.skip_scales == (0.01, 0.0001) and staged.skip_scales == (1.0, 1.0)
    # a constant, not a tensor: nothing to train, nothing new in the state dict
    assert model.state_dict().keys() == staged.state_dict().keys()
    seen = {}
    for name in ("score_pool4", "score_pool3"):
        getattr(model, name).register_forward_pre_hook(lambda m, args, name=name: seen.update({name: args[0]}))
    image = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        _, _, pool3, pool4, _ = model.backbone(image)
        model(image)
    torch.testing.assert_close(seen["score_pool4"], pool4 * 0.01)
    torch.testing.assert_close(seen["score_pool3"], pool3 * 0.0001)


# ---------------------------------------------------------------- loss and optimiser


def test_reference_loss_is_the_sum_of_pixel_cross_entropy(reference_root: Path, tmp_path: Path) -> None:
    loss = build_loss(reference_cfg("voc_fcn32s", reference_root, tmp_path).loss)
    logits = torch.randn(1, 21, 12, 17, dtype=torch.float64)
    mask = torch.randint(0, 21, (1, 12, 17))
    mask[0, :3] = 255
    expected = F.cross_entropy(logits, mask, ignore_index=255, reduction="none")[mask != 255].sum()
    torch.testing.assert_close(loss(logits, mask), expected)


LR = {"voc_fcn32s": 1e-10, "voc_fcn16s": 1e-12, "voc_fcn8s": 1e-14, "voc_fcn8s_atonce": 1e-10}


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_biases_train_at_twice_the_lr_without_decay(experiment: str, reference_root: Path, tmp_path: Path) -> None:
    cfg = reference_cfg(experiment, reference_root, tmp_path)
    model = hydra.utils.instantiate(cfg.model)
    module = build_module(cfg, model, build_loss(cfg.loss))
    module.trainer = SimpleNamespace(estimated_stepping_batches=cfg.trainer.max_steps)
    configured = module.configure_optimizers()
    optimizer = configured["optimizer"]
    weights, biases = optimizer.param_groups
    lr = LR[experiment]
    assert isinstance(optimizer, torch.optim.SGD)
    assert (weights["lr"], weights["momentum"], weights["weight_decay"]) == (lr, 0.99, 5e-4)
    assert (biases["lr"], biases["momentum"], biases["weight_decay"]) == (2 * lr, 0.99, 0.0)
    names = {id(p): n for n, p in model.named_parameters()}
    assert {names[id(p)] for p in biases["params"]} == {n for n, p in model.named_parameters() if n.endswith("bias")}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert {names[id(p)] for g in optimizer.param_groups for p in g["params"]} == trainable
    # a fixed LR: the schedule leaves it where it is
    scheduler = configured["lr_scheduler"]["scheduler"]
    for _ in range(3):
        optimizer.step()
        scheduler.step()
    assert [g["lr"] for g in optimizer.param_groups] == [lr, 2 * lr]


# ---------------------------------------------------------------- training: steps, stages, mandatory inputs


def validation_steps(run_dir: Path) -> list[int]:
    """The global steps at which val/mIoU was logged."""
    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    return [event.step for event in events.Scalars("val/mIoU")]


def test_validation_every_n_steps_across_epochs(reference_root: Path, tmp_path: Path) -> None:
    """6 SBD train images at batch 1 are 6 steps an epoch; every 4 steps crosses the epoch's end."""
    cfg = reference_cfg(
        "voc_fcn32s", reference_root, tmp_path, "trainer.max_steps=8", "trainer.val_check_interval=4"
    )
    train(cfg)
    # Lightning logs a validation inside the training loop at the step count before that batch's
    # increment: after batches 4 and 8 (the second in epoch 1) it writes steps 3 and 7
    assert validation_steps(tmp_path) == [3, 7]
    summary = json.loads((tmp_path / "metrics.json").read_text())
    assert summary["global_step"] == 8 and summary["final"]["step"] == 8 and summary["final"]["epoch"] == 1


def scores(model: torch.nn.Module, datamodule: L.LightningDataModule) -> tuple[float, int]:
    """mIoU of `model` on the datamodule's validation split, and how many classes it predicted."""
    metrics = SegmentationMetrics(datamodule.num_classes, datamodule.ignore_index)
    predicted: set[int] = set()
    model.eval()
    with torch.no_grad():
        for batch in datamodule.val_dataloader():
            batch = datamodule.on_after_batch_transfer(batch, 0)
            prediction = model(batch["image"]).argmax(1)
            metrics.update(prediction, batch["mask"])
            predicted |= set(prediction.unique().tolist())
    return float(metrics.compute()["mIoU"]), len(predicted)


@pytest.mark.slow
def test_fcn16s_from_a_trained_fcn32s_starts_from_its_score(smoke_cfg) -> None:
    # class weights: after a few steps it predicts more than background, so the scores say something
    cfg32 = smoke_cfg(
        "model=fcn32s", "loss.class_weights=auto", "optim.lr=5e-3", "trainer.max_epochs=4",
        "trainer.limit_train_batches=4",
    )  # fmt: skip
    train(cfg32)
    checkpoint = Path(cfg32.paths.output_dir) / "checkpoints" / "last.ckpt"
    fcn32 = hydra.utils.instantiate(cfg32.model, init_from=str(checkpoint))
    cfg16 = smoke_cfg("model=fcn16s", f"model.init_from={checkpoint}")
    fcn16 = hydra.utils.instantiate(cfg16.model)

    state32, state16 = fcn32.state_dict(), fcn16.state_dict()
    assert set(state32) - set(state16) == {"upscore.weight"}  # 32s's own final upsampling
    for name, tensor in state32.items():
        if name in state16:
            torch.testing.assert_close(state16[name], tensor, msg=name)
    assert not state16["score_pool4.weight"].any() and not state16["score_pool4.bias"].any()

    datamodule = build_datamodule(cfg16.data)
    datamodule.setup()
    miou32, classes32 = scores(fcn32, datamodule)
    miou16, _ = scores(fcn16, datamodule)
    assert classes32 > 1, "the FCN-32s predicts one class: the comparison would say nothing"
    assert abs(miou16 - miou32) <= 0.01, (miou16, miou32)


def test_required_stage_inputs_are_named(reference_root: Path, tmp_path: Path) -> None:
    for experiment, key in [("voc_fcn16s", "model.init_from"), ("voc_fcn32s", "model.backbone.weights")]:
        cfg = compose_config("train", [f"experiment={experiment}"], tmp_path)
        with pytest.raises(RequiredValueError, match=rf"^{re.escape(key)} is required by this config"):
            check_required(cfg)
        with pytest.raises(Exception) as raised:  # where the run reads it first: the model
            hydra.utils.instantiate(cfg.model)
        assert str(find_user_error(raised.value)).startswith(f"{key} is required")
    check_required(reference_cfg("voc_fcn16s", reference_root, tmp_path))
    # a plain `???` read anywhere is a one-line error naming its key too
    missing = OmegaConf.create({"model": {"init_from": "???"}})
    with pytest.raises(Exception) as raised:
        missing.model.init_from  # noqa: B018
    assert str(find_user_error(raised.value)) == (
        "model.init_from is mandatory (???) and has no value: pass model.init_from=..."
    )


def test_fcn16s_without_init_from_fails_in_one_line(reference_root: Path, tmp_path: Path) -> None:
    result = run_script(
        [sys.executable, "src/train.py", "experiment=voc_fcn16s", f"data.root={reference_root}",
         f"data.sbd_root={reference_root}", f"paths.log_dir={tmp_path}/logs", TINY],
    )  # fmt: skip
    assert result.returncode == 1
    assert "Traceback" not in result.stderr + result.stdout
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line.startswith("seglab: error: model.init_from is required by this config")
    assert "pass model.init_from=<the trained FCN-32s checkpoint" in last_line


# ---------------------------------------------------------------- the pipeline and its docs page


@pytest.mark.slow
def test_reproduce_fcn_runs_the_three_stages(reference_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "repro"
    shrink = [TINY, "trainer.max_steps=2", "trainer.val_check_interval=2", "data.num_workers=0",
              "data.pin_memory=false", "trainer.accelerator=cpu", "callbacks.progress_bar=null",
              "callbacks.segmentation_images=null", "model_size_at=null", f"paths.log_dir={tmp_path}/logs"]  # fmt: skip
    result = run_script(
        [sys.executable, "scripts/reproduce_fcn.py", f"data.root={reference_root}",
         f"sbd.root={reference_root}", "weights=null", f"out={out}", *shrink],
        timeout=900,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    stages = {stage["stage"]: stage for stage in json.loads((out / "results.json").read_text())["stages"]}
    assert list(stages) == ["fcn32s", "fcn16s", "fcn8s"]
    for name, parent in (("fcn16s", "fcn32s"), ("fcn8s", "fcn16s")):
        assert stages[name]["init_from"] == str(out / parent / "checkpoints" / "last.ckpt")
        overrides = (out / name / ".hydra" / "overrides.yaml").read_text()
        assert f"model.init_from={out / parent / 'checkpoints' / 'last.ckpt'}" in overrides
    for stage in stages.values():
        assert stage["global_step"] == 2 and stage["best_step"] == 2
        assert 0 <= stage["best_mIoU"] <= 100 and stage["val_images"] == ReferenceLayoutSpec().seg11valid
    table = (out / "results.md").read_text()
    assert table in result.stdout
    row = next(line for line in table.splitlines() if line.startswith("| FCN-16s |"))
    assert row.startswith(f"| FCN-16s | 65.0 | 62.4 | 64.8 | {stages['fcn16s']['best_mIoU']} |")
    assert next(line for line in table.splitlines() if line.startswith("| FCN-8s at-once |")).endswith("|  |  |  |  |")


def load_script(name: str):
    """Import scripts/<name>.py as a module."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_reproducing_page_quotes_the_script_targets() -> None:
    script = load_script("reproduce_fcn")
    page = (ROOT / "docs" / "reproducing-fcn.md").read_text()
    for source in script.TARGETS.values():
        for value in source.values():
            assert str(value) in page or f"{value:.2f}" in page, value
    assert script.parse_args(["weights=imagenet"]).overrides == ["data.normalize=imagenet"]
    with pytest.raises(UserError, match="weights=<VGG16 converted from Caffe"):
        script.parse_args([])
    with pytest.raises(UserError, match="fcn16s starts from fcn32s"):
        script.parse_args(["stages=fcn16s,fcn32s", "weights=x.pth"])


def test_voc2012_fcn8s_is_the_modern_recipe(tmp_path: Path) -> None:
    cfg = compose_config("train", ["experiment=voc2012_fcn8s"], tmp_path)
    assert cfg.model._target_ == "src.models.fcn.FCN8s" and cfg.model.backbone.weights == "imagenet"
    assert cfg.data.use_sbd and cfg.data.val_split == "val" and cfg.data.normalize == "imagenet"
    assert (cfg.data.batch_size, cfg.data.augment.crop_size) == (16, 512)
    assert (cfg.optim.lr, cfg.optim.momentum) == (1e-2, 0.9)
    assert cfg.module.scheduler._target_.endswith("PolynomialLR") and cfg.module.channels_last
    trainer = cfg.trainer
    assert (trainer.max_steps, trainer.max_epochs, trainer.check_val_every_n_epoch) == (20000, -1, None)
    assert trainer.precision == "bf16-mixed"
