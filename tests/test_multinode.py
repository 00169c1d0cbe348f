"""Multi-node, as far as one machine can check it: what a node's Trainer reads from its environment.

Each case builds the Trainer that `src/train.py ... trainer.num_nodes=2 trainer.devices=2` builds on
the second node, with the variables torchrun, SLURM or a manual launch set there; nothing is launched.
"""

from __future__ import annotations

import os

import hydra
import pytest
import torch
from lightning.fabric.plugins.environments import (
    LightningEnvironment,
    SLURMEnvironment,
    TorchElasticEnvironment,
)
from lightning.pytorch.strategies import DDPStrategy

from src.utils.build import build_trainer

CLUSTER_VARS = (
    "MASTER_ADDR",
    "MASTER_PORT",
    "NODE_RANK",
    "GROUP_RANK",
    "LOCAL_RANK",
    "RANK",
    "WORLD_SIZE",
    "LOCAL_WORLD_SIZE",
    "TORCHELASTIC_RUN_ID",
)

TORCHRUN_NODE_1 = {  # torchrun --nnodes=2 --nproc-per-node=2 --node-rank=1 ..., its second process
    "MASTER_ADDR": "10.0.0.1",
    "MASTER_PORT": "29400",
    "WORLD_SIZE": "4",
    "RANK": "3",
    "LOCAL_RANK": "1",
    "GROUP_RANK": "1",
    "LOCAL_WORLD_SIZE": "2",
    "TORCHELASTIC_RUN_ID": "seglab",
}
SLURM_NODE_1 = {  # sbatch --nodes=2 --ntasks-per-node=2 + srun, the first task of the second node
    "SLURM_NTASKS": "4",
    "SLURM_NTASKS_PER_NODE": "2",
    "SLURM_NNODES": "2",
    "SLURM_PROCID": "2",
    "SLURM_LOCALID": "0",
    "SLURM_NODEID": "1",
    "SLURM_NODELIST": "gpu[07-08]",
    "SLURM_JOB_ID": "1234567",
    "SLURM_JOB_NAME": "train",
}
MANUAL_NODE_1 = {"MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "29500", "NODE_RANK": "1"}


@pytest.fixture
def node_env():
    """Factory: replace every cluster variable by the given ones; the environment is restored after."""
    saved = dict(os.environ)

    def set_env(values: dict[str, str]) -> None:
        for key in [*CLUSTER_VARS, *[k for k in os.environ if k.startswith("SLURM_")]]:
            os.environ.pop(key, None)
        os.environ.update(values)

    yield set_env
    os.environ.clear()
    os.environ.update(saved)


def two_node_trainer(smoke_cfg, *overrides: str):
    cfg = smoke_cfg("trainer.num_nodes=2", "trainer.devices=2", "data.batch_size=8", *overrides)
    return cfg, build_trainer(cfg)


def test_torchrun_node(smoke_cfg, node_env) -> None:
    node_env(TORCHRUN_NODE_1)
    cfg, trainer = two_node_trainer(smoke_cfg)
    env = trainer.strategy.cluster_environment
    assert isinstance(trainer.strategy, DDPStrategy) and isinstance(env, TorchElasticEnvironment)
    assert env.creates_processes_externally  # torchrun started the processes: Lightning starts none
    assert (trainer.world_size, trainer.num_nodes, trainer.node_rank) == (4, 2, 1)
    assert (trainer.global_rank, trainer.local_rank) == (3, 1)
    assert (env.main_address, env.main_port) == ("10.0.0.1", 29400)
    env.validate_settings(num_devices=2, num_nodes=2)
    with pytest.raises(ValueError, match="does not match the world size"):
        env.validate_settings(num_devices=4, num_nodes=2)
    # data.batch_size is global: 8 over 2 nodes x 2 devices
    datamodule = hydra.utils.instantiate(cfg.data)
    datamodule.trainer = trainer
    assert datamodule.per_device_batch_size() == 2


def test_slurm_node(smoke_cfg, node_env) -> None:
    node_env(SLURM_NODE_1)
    _, trainer = two_node_trainer(smoke_cfg)
    env = trainer.strategy.cluster_environment
    assert isinstance(env, SLURMEnvironment) and env.creates_processes_externally
    assert (trainer.world_size, trainer.node_rank, trainer.global_rank, trainer.local_rank) == (
        4,
        1,
        2,
        0,
    )
    # the first host of the allocation; the port from the job id (Lightning: 15000 + its last 4 digits)
    assert (env.main_address, env.main_port) == ("gpu07", 15000 + 4567)
    with pytest.raises(ValueError, match="--ntasks-per-node=2"):
        env.validate_settings(num_devices=4, num_nodes=2)


def test_interactive_slurm_allocation_falls_back_to_lightnings_launcher(
    smoke_cfg, node_env
) -> None:
    # `srun --job-name=interactive --pty bash`: SLURM only allocates; Lightning starts the processes
    node_env({**SLURM_NODE_1, "SLURM_JOB_NAME": "interactive", **MANUAL_NODE_1})
    _, trainer = two_node_trainer(smoke_cfg)
    assert isinstance(trainer.strategy.cluster_environment, LightningEnvironment)


def test_manual_launch_node(smoke_cfg, node_env) -> None:
    # `MASTER_ADDR=... MASTER_PORT=... NODE_RANK=1 python src/train.py trainer.num_nodes=2 trainer.devices=2`
    node_env(MANUAL_NODE_1)
    _, trainer = two_node_trainer(smoke_cfg)
    env = trainer.strategy.cluster_environment
    assert isinstance(env, LightningEnvironment)
    assert not env.creates_processes_externally  # this node's launcher starts its second process
    assert (trainer.world_size, trainer.node_rank, trainer.global_rank) == (4, 1, 2)
    assert (env.main_address, env.main_port) == ("10.0.0.1", 29500)
    assert trainer.strategy.launcher.num_processes == 2 and trainer.strategy.launcher.num_nodes == 2


def test_ddp_presets_compose(smoke_cfg, node_env) -> None:
    node_env({})
    cfg = smoke_cfg("trainer=ddp", "trainer.num_nodes=2", "trainer.accelerator=gpu")
    assert (cfg.trainer.accelerator, cfg.trainer.strategy, cfg.trainer.devices) == ("gpu", "ddp", 2)
    assert cfg.trainer.num_nodes == 2 and cfg.callbacks.sync_batchnorm is not None
    assert cfg.trainer.use_distributed_sampler is False  # the datamodule's samplers stay
    for preset, accelerator in [("gpu", "gpu"), ("cpu", "cpu")]:
        assert (
            smoke_cfg(f"trainer={preset}", f"trainer.accelerator={accelerator}").trainer.devices
            == 1
        )
    _, trainer = two_node_trainer(smoke_cfg, "trainer=ddp_cpu", "trainer.accelerator=cpu")
    assert isinstance(trainer.strategy, DDPStrategy)
    assert trainer.strategy.root_device == torch.device("cpu")
    assert trainer.strategy._get_process_group_backend() == "gloo"


def test_devices_alone_picks_ddp(smoke_cfg, node_env) -> None:
    node_env({})
    trainer = build_trainer(smoke_cfg("trainer.devices=2", "trainer.accelerator=auto"))
    if torch.cuda.is_available():
        pytest.skip("this checks the CPU-only path")
    assert isinstance(trainer.strategy, DDPStrategy) and trainer.world_size == 2
    assert trainer.strategy._get_process_group_backend() == "gloo"
