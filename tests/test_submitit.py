"""Sweeps through hydra-submitit-launcher (the `slurm` extra): submitit_local runs, SLURM configs compose."""

from __future__ import annotations

import json
from pathlib import Path

import hydra
import pytest

from tests.conftest import SMOKE_DATA, compose_config

pytest.importorskip("hydra_plugins.hydra_submitit_launcher")

from tests.test_ddp_sweep import assert_complete_job, run_train  # noqa: E402


def launcher_params(*overrides: str, tmp_path: Path) -> dict:
    """Compose train.yaml with the overrides and build the launcher (nothing is submitted)."""
    cfg = compose_config("train", ["debug=smoke", *SMOKE_DATA, *overrides], tmp_path / "run")
    launcher = hydra.utils.instantiate(cfg.hydra.launcher)
    assert type(launcher).__name__ == "SlurmLauncher"
    return launcher.params


def test_submitit_slurm_composes_with_resources_from_the_command_line(tmp_path: Path) -> None:
    params = launcher_params(
        "hydra/launcher=submitit_slurm",
        "hydra.launcher.partition=gpu",
        "hydra.launcher.nodes=2",
        "hydra.launcher.gpus_per_node=4",
        "hydra.launcher.tasks_per_node=4",
        "hydra.launcher.timeout_min=120",
        "+hydra.launcher.additional_parameters.mail-type=END",
        tmp_path=tmp_path,
    )
    assert {
        k: params[k]
        for k in ("partition", "nodes", "gpus_per_node", "tasks_per_node", "timeout_min")
    } == {
        "partition": "gpu",
        "nodes": 2,
        "gpus_per_node": 4,
        "tasks_per_node": 4,
        "timeout_min": 120,
    }
    assert params["additional_parameters"] == {"mail-type": "END"}


def test_slurm_ddp_takes_its_resources_from_the_trainer(tmp_path: Path) -> None:
    params = launcher_params(
        "hydra/launcher=slurm_ddp",
        "hydra.launcher.partition=a100",
        "trainer=ddp",
        "trainer.accelerator=gpu",
        "trainer.devices=4",
        "trainer.num_nodes=2",
        tmp_path=tmp_path,
    )
    # one SLURM task per GPU on every node: SLURMEnvironment then sees all 8 ranks
    assert (params["nodes"], params["tasks_per_node"], params["gpus_per_node"]) == (2, 4, 4)
    assert params["partition"] == "a100"


@pytest.mark.slow
def test_submitit_local_sweep_completes(tmp_path: Path, data_dir: Path, smoke_cfg) -> None:
    # The jobs run at the same time: generate the dataset first so they do not both write it.
    hydra.utils.instantiate(smoke_cfg(f"paths.data_dir={data_dir}").data).prepare_data()
    sweep = tmp_path / "sweep"
    result = run_train(
        "-m",
        "hydra/launcher=submitit_local",
        "trainer.devices=1,2",
        "trainer.max_epochs=1",
        "hydra.launcher.timeout_min=15",
        f"paths.log_dir={tmp_path}/logs",
        f"hydra.sweep.dir={sweep}",
        data_dir=data_dir,
    )
    assert result.returncode == 0, result.stdout[-4000:]
    # .submitit/ holds submitit's own job logs and pickles
    assert sorted(p.name for p in sweep.iterdir()) == [".submitit", "0", "1", "multirun.yaml"]
    assert not (tmp_path / "logs").exists()
    assert_complete_job(sweep / "0", world_size=1)
    # DDP inside a submitit job: the child runs src/train.py, not submitit's worker module
    assert_complete_job(sweep / "1", world_size=2)
    assert json.loads((sweep / "1" / "metrics.json").read_text())["seed"] == 42
