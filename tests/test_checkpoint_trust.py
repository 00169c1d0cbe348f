"""A checkpoint is data: its stored config rebuilds only seglab's models (or ones the user allows).

Every checkpoint here is made of primitives only, so torch.load(weights_only=True) accepts it: the
danger is the `_target_` it names. Each crafted file asks seglab to write a marker file; eval.py,
predict.py and scripts/export.py must refuse it by name, exit non-zero and write nothing.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from src.utils.checkpoint import (
    UntrustedCheckpointError,
    build_checked,
    check_model_config,
    model_from_checkpoint,
    shipped_model_targets,
)
from tests.conftest import CONF_DIR, ROOT, SMOKE_DATA, TINY_FCN8S_CFG
from tests.helpers.cli import run_script
from tests.test_model_contract import PRESETS, build, model_config

NUM_CLASSES = 6


def save(path: Path, model_cfg: dict, state: dict | None = None, data_cfg: dict | None = None) -> Path:
    """A Lightning-shaped checkpoint of plain values: what anyone can write and weights_only accepts."""
    config = {"model": model_cfg, "data": data_cfg or {}}
    torch.save({"state_dict": state or {}, "hyper_parameters": {"num_classes": NUM_CLASSES, "config": config}}, path)
    return path


def writing_targets(marker: Path) -> dict[str, dict]:
    """Stored model configs whose building would write `marker` (a call by name, nested, Hydra's _args_ and _partial_)."""
    savetxt = {"_target_": "numpy.savetxt", "fname": str(marker), "X": [[1]], "header": "import os"}
    return {
        "savetxt": savetxt,
        "torch_save": {"_target_": "torch.save", "obj": [1, 2], "f": str(marker)},
        "nested_in_backbone": {**TINY_FCN8S_CFG, "backbone": savetxt},
        "args": {"_target_": "numpy.savetxt", "_args_": [str(marker), [[1]]]},
        "partial": {**TINY_FCN8S_CFG, "_partial_": True},
    }


REFUSED = {  # variant -> what the message names
    "savetxt": "model._target_='numpy.savetxt'",
    "torch_save": "model._target_='torch.save'",
    "nested_in_backbone": "model.backbone._target_='numpy.savetxt'",
    "args": "model._args_ uses Hydra's _args_",
    "partial": "model._partial_ uses Hydra's _partial_",
}


@pytest.fixture
def image(tmp_path: Path) -> Path:
    """One input image for predict and export."""
    path = tmp_path / "in" / "image.png"
    path.parent.mkdir()
    Image.fromarray(np.full((40, 48, 3), 127, np.uint8)).save(path)
    return path


def entry_point_commands(ckpt: Path, image: Path, tmp_path: Path) -> dict[str, list[str]]:
    """The three entry points a user would point at a checkpoint."""
    logs = f"paths.log_dir={tmp_path}/logs"
    return {
        "eval": [sys.executable, "src/eval.py", f"ckpt_path={ckpt}", logs],
        "predict": [sys.executable, "src/predict.py", f"ckpt_path={ckpt}", f"input={image}", logs],
        "export": [sys.executable, "scripts/export.py", f"ckpt_path={ckpt}", "format=onnx", "exporter=legacy", f"input={image}"],
    }


def files_under(folder: Path) -> set[Path]:
    """Every file below `folder`."""
    return {path for path in folder.rglob("*") if path.is_file()}


def test_the_shipped_targets_are_the_model_configs_targets() -> None:
    assert {"src.models.fcn.FCN8s", "src.models.torchvision_models.TorchvisionSegmentation"} <= shipped_model_targets()
    assert all(target.startswith("src.models.") for target in shipped_model_targets())


@pytest.mark.parametrize("variant", list(REFUSED))
def test_the_check_refuses_before_anything_is_built(variant: str, tmp_path: Path) -> None:
    marker = tmp_path / "marker.txt"
    with pytest.raises(UntrustedCheckpointError, match=re.escape(f"checkpoint x.ckpt: {REFUSED[variant]}")):
        check_model_config(writing_targets(marker)[variant], "x.ckpt")
    assert not marker.exists()


@pytest.mark.slow
@pytest.mark.parametrize("variant", list(REFUSED))
def test_eval_predict_and_export_refuse_by_name_and_write_nothing(variant: str, image: Path, tmp_path: Path) -> None:
    watched = tmp_path / "watched"
    watched.mkdir()
    marker = watched / "marker.txt"
    ckpt = save(tmp_path / f"{variant}.ckpt", writing_targets(marker)[variant])
    before = files_under(watched) | files_under(image.parent)
    for name, command in entry_point_commands(ckpt, image, tmp_path).items():
        result = run_script(command)
        assert result.returncode != 0, name
        message = result.stderr.strip().splitlines()[-1]
        assert message.startswith("seglab: error: checkpoint") and str(ckpt) in message, (name, message)
        assert REFUSED[variant] in message, (name, message)
        assert "Traceback" not in result.stderr, name
    assert files_under(watched) | files_under(image.parent) == before and not marker.exists()
    assert not list(tmp_path.glob("*.onnx"))


def test_export_without_input_never_builds_the_stored_data_config(tmp_path: Path, data_dir: Path) -> None:
    marker = tmp_path / "marker.txt"
    torch.manual_seed(0)
    model = build_checked(TINY_FCN8S_CFG)
    state = {f"model.{k}": v for k, v in model.state_dict().items()}
    data_cfg = {"_target_": "numpy.savetxt", "fname": str(marker), "X": [[1]], "normalize": "imagenet", "pad_multiple": 32}
    ckpt = save(tmp_path / "data.ckpt", dict(TINY_FCN8S_CFG), state, data_cfg)
    smoke_data = [item.replace("${paths.data_dir}", str(data_dir)) for item in SMOKE_DATA]
    result = run_script(
        [sys.executable, "scripts/export.py", f"ckpt_path={ckpt}", "format=torchscript", f"output={tmp_path}/m.pt", *smoke_data]
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "max |logit diff|" in result.stdout and (tmp_path / "m.pt").is_file()
    assert not marker.exists()


@pytest.mark.parametrize("preset", list(PRESETS))
def test_every_preset_rebuilds_from_its_checkpoint(preset: str, tmp_path: Path) -> None:
    model = build(preset).eval()
    config = OmegaConf.to_container(model_config(preset), resolve=True)
    ckpt = save(tmp_path / "m.ckpt", config, {f"model.{k}": v for k, v in model.state_dict().items()})
    rebuilt, hparams = model_from_checkpoint(ckpt)
    x = torch.randn(1, 3, 40, 56)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x), model(x))
    assert hparams["num_classes"] == NUM_CLASSES


def test_weight_sources_are_dropped_and_strings_stay_strings(tmp_path: Path) -> None:
    """A stored weights path is not loaded again (the tensors replace it) and `${...}` is never resolved."""
    model = build_checked(TINY_FCN8S_CFG)
    state = {f"model.{k}": v for k, v in model.state_dict().items()}
    stored = {
        **TINY_FCN8S_CFG,
        "init_from": "${oc.env:HOME}/elsewhere.ckpt",  # would fail to load if it were used at all
        "backbone": {**TINY_FCN8S_CFG["backbone"], "weights": str(tmp_path / "gone.pth")},
    }
    rebuilt, hparams = model_from_checkpoint(save(tmp_path / "m.ckpt", stored, state))
    assert hparams["config"]["model"]["init_from"] == "${oc.env:HOME}/elsewhere.ckpt"  # untouched
    for key, value in rebuilt.state_dict().items():
        assert torch.equal(value, state[f"model.{key}"]), key


OWN_MODEL = '''
import torch
from torch import nn
from src.models.contract import SegmentationModel


class Net(SegmentationModel):
    """A user's own model: a 1x1 conv head over the image."""

    weight_keys = ("init_from",)

    def __init__(self, num_classes: int, tag: str = "", init_from=None):
        super().__init__()
        self.tag = tag
        self.head = nn.Conv2d(3, num_classes, 1)
        self.declare_head(self.head)

    def forward(self, x):
        return self.outputs(self.head(x))
'''


@pytest.mark.slow
def test_a_users_own_model_works_once_allowed_on_the_command_line(image: Path, tmp_path: Path, data_dir: Path) -> None:
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "mymodels.py").write_text(OWN_MODEL)
    sys.path.insert(0, str(package))
    try:
        model = build_checked({"_target_": "mymodels.Net", "num_classes": NUM_CLASSES})
    finally:
        sys.path.remove(str(package))
    smoke_data = [item.replace("${paths.data_dir}", str(data_dir)) for item in SMOKE_DATA]
    model_cfg = {"_target_": "mymodels.Net", "num_classes": NUM_CLASSES, "tag": "${oc.env:HOME}", "init_from": None}
    ckpt = save(tmp_path / "own.ckpt", model_cfg, {f"model.{k}": v for k, v in model.state_dict().items()},
                {"normalize": "imagenet", "pad_multiple": 32})
    env = {**os.environ, "PYTHONPATH": f"{package}:{ROOT}"}
    commands = entry_point_commands(ckpt, image, tmp_path)
    commands["eval"] += ["debug=smoke", *smoke_data]
    refused = run_script(commands["predict"], env=env)
    assert refused.returncode == 1 and "trust.model_targets=[mymodels.Net]" in refused.stderr
    for name, command in commands.items():
        result = run_script([*command, "trust.model_targets=[mymodels.Net]"], env=env)
        assert result.returncode == 0, (name, result.stderr[-2000:])
    assert (tmp_path / "own.onnx").is_file()


def test_conf_dir_is_where_the_loader_looks() -> None:
    from src.utils import checkpoint

    assert checkpoint.CONF_MODEL_DIR == CONF_DIR / "model"


def test_stored_test_time_defaults_are_read_as_plain_values_only() -> None:
    from src.predict import stored_inference_defaults

    stored = {"inference": {"mode": "${oc.env:HOME}", "crop_size": "${seglab.required:x}", "stride": [768, 768]}}
    assert stored_inference_defaults(stored) == {"stride": [768, 768]}
    assert stored_inference_defaults({"inference": {"mode": "slide", "crop_size": 512}}) == {"mode": "slide", "crop_size": 512}
