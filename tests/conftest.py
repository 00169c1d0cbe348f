"""Shared fixtures: compose the real configs the way a user's command line would, shrunk to CPU size."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

ROOT = Path(__file__).resolve().parents[1]
CONF_DIR = ROOT / "conf"
os.environ.setdefault("SEGLAB_ROOT", str(ROOT))

# A 6-class FCN-8s at 1/16 width: the model config tests build checkpoints from by hand.
TINY_FCN8S_CFG = {
    "_target_": "src.models.fcn.FCN8s",
    "num_classes": 6,
    "backbone": {"name": "vgg16_bn", "width": 0.0625, "weights": None},
    "learnable_upsampling": True,
    "init_from": None,
    "dropout": 0.5,
}


# The small embedded set in-process tests train and evaluate on (debug=smoke sizes the run, not the data).
SMOKE_DATA = (
    "data.root=${paths.data_dir}/synthetic_smoke",
    "data.spec.num_train=16",
    "data.spec.num_val=6",
    "data.spec.min_size=64",
    "data.spec.max_size=72",
)


def compose_config(name: str, overrides: Sequence[str], output_dir: Path) -> DictConfig:
    """Compose conf/<name>.yaml with overrides, as `python src/<name>.py ...` would, writing into output_dir."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name=name, overrides=list(overrides), return_hydra_config=True)
    HydraConfig().set_config(cfg)
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir)
    return cfg


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One data dir per test session: the smoke dataset is generated once and reused."""
    return tmp_path_factory.mktemp("data")


@pytest.fixture
def smoke_cfg(data_dir: Path, tmp_path: Path):
    """Factory: the `debug=smoke` training config plus extra overrides, writing into tmp_path/run."""

    def make(*overrides: str, name: str = "train") -> DictConfig:
        return compose_config(
            name,
            [
                "debug=smoke",
                *SMOKE_DATA,
                f"paths.data_dir={data_dir}",
                f"paths.log_dir={tmp_path}/logs",
                *overrides,
            ],
            tmp_path / "run",
        )

    return make
