"""scripts/export.py: ONNX (dynamic H, W) and TorchScript match eager fcn8s on a real image."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from src.utils.checkpoint import InputConvention
from src.utils.errors import UserError
from tests.conftest import ROOT, SMOKE_DATA, TINY_FCN8S_CFG, compose_config
from tests.helpers.checkpoints import write_checkpoint

_spec = importlib.util.spec_from_file_location(
    "seglab_export_script", ROOT / "scripts" / "export.py"
)
export_script = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = export_script  # dataclasses look their module up there
_spec.loader.exec_module(export_script)

MODEL_CFG = TINY_FCN8S_CFG


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Path:
    """A tiny fcn8s checkpoint (random weights, trained-looking BN statistics) whose config names the smoke data."""
    root = tmp_path_factory.mktemp("export")
    data_cfg = compose_config(
        "train", ["debug=smoke", *SMOKE_DATA, f"paths.data_dir={data_dir}"], root / "cfg"
    ).data
    return write_checkpoint(root / "fcn8s.ckpt", MODEL_CFG, OmegaConf.to_container(data_cfg, resolve=True))


@pytest.fixture(scope="module")
def image(checkpoint: Path, data_dir: Path) -> Path:
    """A real validation image of the smoke dataset (generated on first use)."""
    import hydra

    cfg = compose_config(
        "train", ["debug=smoke", *SMOKE_DATA, f"paths.data_dir={data_dir}"], checkpoint.parent / "cfg"
    )
    datamodule = hydra.utils.instantiate(cfg.data)
    datamodule.prepare_data()
    return datamodule.split_pairs("val")[0][0]


def run_export(*args: str) -> dict:
    return export_script.export(export_script.parse_args(list(args)))


def check_parity(result: dict, capsys) -> None:
    printed = capsys.readouterr().out
    print(printed)
    assert len(result["max_abs_diff"]) == 3
    assert max(result["max_abs_diff"]) <= 1e-4
    assert printed.count("max |logit diff|") == 3
    # three different input sizes went through the one exported graph
    assert len({shape[2:] for shape in result["shapes"]}) == 3


def dynamic_dims(path: Path) -> list:
    onnx = pytest.importorskip("onnx")
    dims = onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim
    return [d.dim_param or d.dim_value for d in dims]


@pytest.mark.slow
def test_onnx_dynamo_export_matches_eager(
    checkpoint: Path, image: Path, tmp_path: Path, capsys
) -> None:
    pytest.importorskip("onnxscript")
    pytest.importorskip("onnxruntime")
    result = run_export(
        f"ckpt_path={checkpoint}", "format=onnx", f"input={image}", f"output={tmp_path}/m.onnx"
    )
    check_parity(result, capsys)
    batch, channels, height, width = dynamic_dims(tmp_path / "m.onnx")
    assert channels == 3 and all(isinstance(d, str) for d in (batch, height, width))


def test_onnx_legacy_export_matches_eager(
    checkpoint: Path, image: Path, tmp_path: Path, capsys
) -> None:
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    result = run_export(
        f"ckpt_path={checkpoint}",
        "format=onnx",
        "exporter=legacy",
        f"input={image}",
        f"output={tmp_path}/m.onnx",
    )
    check_parity(result, capsys)
    _, channels, height, width = dynamic_dims(tmp_path / "m.onnx")
    assert channels == 3 and isinstance(height, str) and isinstance(width, str)


def test_torchscript_export_matches_eager_and_defaults(
    checkpoint: Path, image: Path, data_dir: Path, capsys
) -> None:
    # no input= : the first validation image of the data config the data overrides compose (the smoke
    # set here, the embedded dataset without them); no output=: next to the checkpoint
    smoke_data = [item.replace("${paths.data_dir}", str(data_dir)) for item in SMOKE_DATA]
    result = run_export(f"ckpt_path={checkpoint}", "format=torchscript", *smoke_data)
    check_parity(result, capsys)
    assert result["output"] == checkpoint.with_suffix(".torchscript.pt")
    loaded = torch.jit.load(str(result["output"]))
    assert loaded(torch.zeros(1, 3, 64, 96)).shape == (1, 6, 64, 96)


def test_bad_arguments_are_user_errors(checkpoint: Path) -> None:
    with pytest.raises(UserError, match=r"format='tflite': expected one of onnx, torchscript"):
        export_script.parse_args([f"ckpt_path={checkpoint}", "format=tflite"])
    with pytest.raises(UserError, match=r"Key 'heigth' not in 'ExportConfig'"):
        export_script.parse_args([f"ckpt_path={checkpoint}", "heigth=3"])
    with pytest.raises(UserError, match="ckpt_path is required"):
        export_script.parse_args(["format=onnx"])


def test_the_checkpoints_pad_multiple_and_normalisation_shape_the_export_input(tmp_path: Path) -> None:
    """data.pad_multiple and data.normalize of the checkpoint decide the input export checks parity on."""
    image_path = tmp_path / "odd.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (70, 90, 3), dtype=np.uint8)).save(image_path)
    by_32 = export_script.real_input(image_path, InputConvention("imagenet", 32))
    by_64 = export_script.real_input(image_path, InputConvention("imagenet", 64))
    assert tuple(by_32.shape) == (1, 3, 96, 96) and tuple(by_64.shape) == (1, 3, 128, 128)
    caffe = export_script.real_input(image_path, InputConvention("caffe_bgr", 32))
    rgb = np.asarray(Image.open(image_path), np.float32)
    expected = rgb[..., ::-1] - np.array([104.00699, 116.66877, 122.67892], np.float32)  # BGR - mean
    np.testing.assert_allclose(caffe[0, :, :70, :90].permute(1, 2, 0).numpy(), expected, atol=1e-4)
