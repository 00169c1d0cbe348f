"""The SLURM resources of a sweep job, read from the `hydra/launcher` config the user chose.

`hydra/launcher=slurm_ddp` asks `trainer.num_nodes` nodes with `trainer.devices` tasks (and GPUs) on
each; `submitit_slurm` takes every value from the command line. The values are those of
hydra-submitit-launcher's SlurmQueueConf, turned into submitit's executor parameters the way that
launcher does, and resolved per job: a job's own `trainer.devices` / `trainer.num_nodes` override
asks its own task count.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf

from src.utils.errors import UserError

# What AutoExecutor calls by the same name on every cluster; the rest of hydra-submitit-launcher's
# SlurmQueueConf goes to SLURM with the `slurm_` prefix (as that launcher does).
GENERIC_KEYS = (
    "timeout_min",
    "mem_gb",
    "nodes",
    "cpus_per_task",
    "gpus_per_node",
    "tasks_per_node",
    "stderr_to_stdout",
)
# Launcher keys that are no sbatch option: the folder and job name are the backend's, max_num_timeout
# is submitit's own requeue (Lightning requeues here).
NOT_SBATCH = ("_target_", "submitit_folder", "name", "max_num_timeout")
# Overrides a job may carry that change its SLURM resources through slurm_ddp's interpolations.
RESOURCE_KEYS = ("trainer.devices", "trainer.num_nodes")


def launcher_config(config: DictConfig) -> dict[str, Any]:
    """The resolved `hydra.launcher` of a sweep's config, less what is no sbatch option; UserError unless SLURM's."""
    launcher = OmegaConf.select(config, "hydra.launcher")
    target = str(OmegaConf.select(config, "hydra.launcher._target_", default=""))
    if launcher is None or not target.endswith("SlurmLauncher"):
        raise UserError(
            f"sweep.backend=slurm takes its resources from a SLURM launcher config, but hydra.launcher is "
            f"{target or 'not set'}: add hydra/launcher=slurm_ddp (one DDP run of trainer.num_nodes x "
            "trainer.devices tasks per job) or hydra/launcher=submitit_slurm"
        )
    # key by key: submitit_folder's interpolations (Hydra's sweep dir) are never resolved
    return {key: _plain(launcher[key]) for key in launcher if key not in NOT_SBATCH}


def _plain(value: Any) -> Any:
    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


def executor_parameters(launcher: Mapping[str, Any]) -> dict[str, Any]:
    """submitit.AutoExecutor parameters from a resolved SLURM launcher config."""
    params = {key: value for key, value in launcher.items() if value is not None}
    delay = params.pop("signal_delay_s", 120)
    # Lightning's requeue signal; the user's own additional_parameters.signal still wins
    params["additional_parameters"] = {
        "signal": f"USR1@{delay}",
        **params.get("additional_parameters", {}),
    }
    return {key if key in GENERIC_KEYS else f"slurm_{key}": value for key, value in params.items()}


def check_tasks_match_devices(config: DictConfig, launcher: Mapping[str, Any]) -> None:
    """Lightning's SLURMEnvironment needs one task per device on each node: say so before submitting."""
    devices, num_nodes = config.trainer.get("devices"), config.trainer.get("num_nodes", 1)
    if not isinstance(devices, int) or not isinstance(num_nodes, int):
        return  # "auto" or a device list: Lightning checks the job's own variables
    asked = (launcher.get("nodes", 1), launcher.get("tasks_per_node", 1))
    if asked != (num_nodes, devices):
        raise UserError(
            f"hydra.launcher asks {asked[0]} node(s) x {asked[1]} task(s) but trainer.num_nodes={num_nodes} "
            f"x trainer.devices={devices}: Lightning needs one SLURM task per device "
            "(hydra/launcher=slurm_ddp sets both from the trainer)"
        )


def job_parameters(config: DictConfig, overrides: Sequence[str]) -> dict[str, Any]:
    """submitit parameters of one job: the launcher config with the job's trainer.devices / num_nodes."""
    parsed = OverridesParser.create().parse_overrides(list(overrides))
    changes = {o.key_or_group: o.value() for o in parsed if o.key_or_group in RESOURCE_KEYS}
    if changes:
        config = copy.deepcopy(config)
        for key, value in changes.items():
            OmegaConf.update(config, key, value)
    launcher = launcher_config(config)
    check_tasks_match_devices(config, launcher)
    return executor_parameters(launcher)
